import { MAX_CHAIN, type KeyStatement } from '../identity/rotation.js';

/**
 * The registry's side of key rotation (identity/rotation.ts defines and verifies the chain): a
 * member's chain may only grow. A chain that is shorter than the one held, or differs from it
 * in any statement it holds, is refused: a stolen older key, or a replayed older chain, cannot
 * take the identity back or fork it.
 */

/** JSON with object keys sorted, so two parses of one statement compare equal. */
function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${stableJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/** Whether `next` holds every statement of `held`, in order, and perhaps more after them. */
export function extendsChain(held: readonly unknown[], next: readonly unknown[]): boolean {
  if (next.length < held.length) return false;
  for (let i = 0; i < held.length; i++) if (stableJson(held[i]) !== stableJson(next[i])) return false;
  return true;
}

/** What the registry holds for an agent that rotated: its current key and the chain proving it. */
export interface HeldChain {
  key: Uint8Array;
  chain: KeyStatement[];
}

export type ChainScreen =
  | { ok: true; /** The chain to verify the record with (the one sent, else the one held), or none. */ chain: readonly unknown[] | undefined; /** Statements not yet held (signatures to check). */ fresh: number }
  | { ok: false; code: 'BAD_CHAIN' | 'CHAIN_FORK' | 'STALE_KEY'; message: string };

/**
 * The cheap checks on a publish's key chain, against the chain held, before any signature: its
 * size; that it extends the held one; that an agent that rotated signs with its current key
 * (a thief of a rotated-out key, or of the ID's own key, is refused here at the cost of a lookup).
 */
export function screenChain(held: HeldChain | undefined, recordKey: string | undefined, chain: unknown): ChainScreen {
  if (chain !== undefined && (!Array.isArray(chain) || chain.length === 0 || chain.length > MAX_CHAIN)) {
    return { ok: false, code: 'BAD_CHAIN', message: `the key chain must be a list of 1 to ${MAX_CHAIN} key statements` };
  }
  if (!held) return { ok: true, chain, fresh: chain?.length ?? 0 };
  if (chain === undefined) {
    // No `key` in a record means the ID's own key, which the chain's inception names.
    if ((recordKey ?? held.chain[0].key) !== Buffer.from(held.key).toString('base64')) {
      return { ok: false, code: 'STALE_KEY', message: 'this agent rotated its key: its records must be signed by its current key' };
    }
    return { ok: true, chain: held.chain, fresh: 0 };
  }
  if (!extendsChain(held.chain, chain)) {
    return { ok: false, code: 'CHAIN_FORK', message: `the key chain (${chain.length} statements) does not extend the ${held.chain.length} the registry holds: it is shorter, forks or replaces it` };
  }
  return { ok: true, chain, fresh: chain.length - held.chain.length };
}
