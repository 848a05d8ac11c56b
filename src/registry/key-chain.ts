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
