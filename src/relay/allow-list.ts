import { AgentVpnError } from '../errors.js';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import type { AllowHook, Networks } from './hello-gate.js';
import { wgKeyOf } from './protocol.js';

/**
 * The standalone relay's allow list (`agentvpn relay --allow-key [NETWORK:]KEY ...`). KEY is an
 * agent ID, or a base64 Ed25519 or WireGuard public key; NETWORK (default "default") names the
 * group the key is in, and the relay forwards only between keys of a common network, as the
 * registry's built-in relay does for its networks. The lookup is by Ed25519 key, so the relay
 * can refuse a stranger's hello before checking its signature: a WireGuard key is turned into its
 * two possible Ed25519 keys once, here.
 */

export const DEFAULT_ALLOW_NETWORK = 'default';
const NETWORK = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const BASE64_KEY = /^[A-Za-z0-9+/]{43}=$/;
/** The field prime of Curve25519 and Ed25519, 2^255 - 19. */
const P = (1n << 255n) - 19n;

export interface AllowList {
  hook: AllowHook;
  /** Distinct keys (as given) and networks. */
  keys: number;
  networks: string[];
}

export function parseAllowKeys(entries: string[]): AllowList {
  const byEdKey = new Map<string, string[]>(); // Ed25519 key (latin1) → networks
  const given = new Set<string>();
  for (const entry of entries) {
    const colon = entry.indexOf(':');
    const network = colon < 0 ? DEFAULT_ALLOW_NETWORK : entry.slice(0, colon);
    const key = entry.slice(colon + 1);
    if (!NETWORK.test(network)) {
      throw new AgentVpnError('BAD_NETWORK', `invalid network "${network}" in --allow-key "${entry}"`, 'network names are lowercase letters, digits and -, up to 63');
    }
    const fromId = publicKeyOfAgentId(key);
    const raw = fromId ?? (BASE64_KEY.test(key) ? Buffer.from(key, 'base64') : null);
    if (!raw || raw.length !== 32) {
      throw new AgentVpnError('BAD_KEY', `invalid --allow-key "${entry}"`, 'give [NETWORK:]KEY, KEY an agent ID (agentvpn id) or a base64 Ed25519 or WireGuard public key');
    }
    given.add(Buffer.from(raw).toString('base64'));
    // A base64 key may be either kind: allow it as an Ed25519 key and as the WireGuard key of one.
    const edKeys = fromId ? [Buffer.from(fromId)] : [Buffer.from(raw), ...edKeysOfWgKey(raw)];
    for (const ed of edKeys) {
      const id = ed.toString('latin1');
      const nets = byEdKey.get(id) ?? [];
      if (!nets.includes(network)) nets.push(network);
      byEdKey.set(id, nets);
    }
  }
  const networks = [...new Set([...byEdKey.values()].flat())].sort();
  return {
    hook: (edPub: Uint8Array): Networks | null => byEdKey.get(Buffer.from(edPub.buffer, edPub.byteOffset, edPub.length).toString('latin1')) ?? null,
    keys: given.size,
    networks,
  };
}

/**
 * The Ed25519 public keys whose WireGuard (X25519) key is `u`: y = (u − 1) / (u + 1) (RFC 7748's
 * birational map), with either sign of x. Checked by mapping back; none when `u` is no such key.
 */
export function edKeysOfWgKey(u: Uint8Array): Buffer[] {
  const uNum = BigInt(`0x${Buffer.from(u).reverse().toString('hex')}`) & ((1n << 255n) - 1n);
  if (uNum >= P || (uNum + 1n) % P === 0n) return [];
  const y = ((uNum - 1n + P) * modPow(uNum + 1n, P - 2n)) % P;
  const yBytes = Buffer.from(y.toString(16).padStart(64, '0'), 'hex').reverse();
  const out: Buffer[] = [];
  for (const sign of [0, 0x80]) {
    const ed = Buffer.from(yBytes);
    ed[31] |= sign;
    try {
      if (wgKeyOf(ed).equals(Buffer.from(u))) out.push(ed);
    } catch {
      // not a point on the curve
    }
  }
  return out;
}

function modPow(base: bigint, exp: bigint): bigint {
  let result = 1n;
  let b = base % P;
  for (let e = exp; e > 0n; e >>= 1n) {
    if (e & 1n) result = (result * b) % P;
    b = (b * b) % P;
  }
  return result;
}
