/**
 * Agent IDs are self-certifying: "av" followed by the RFC 4648 base32 (lowercase, unpadded)
 * of the agent's 32-byte Ed25519 public key. Anyone holding an ID can check a signature
 * against it without asking the registry.
 */
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';
const PREFIX = 'av';
const ID_LENGTH = PREFIX.length + 52;
/**
 * The same test as publicKeyOfAgentId, as a pattern (for request schemas): 52 characters carry
 * 260 bits, the last one 1 bit of the key and 4 zero bits, so it is "a" or "q".
 */
export const AGENT_ID_PATTERN = /^av[a-z2-7]{51}[aq]$/;

export function agentIdOf(publicKey: Uint8Array): string {
  let bits = 0;
  let value = 0;
  let out = PREFIX;
  for (const byte of publicKey) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

/** The public key an ID encodes, or null when it is not a well-formed agent ID. */
export function publicKeyOfAgentId(id: string): Uint8Array | null {
  if (typeof id !== 'string' || id.length !== ID_LENGTH || !id.startsWith(PREFIX)) return null;
  const out = new Uint8Array(32);
  let bits = 0;
  let value = 0;
  let n = 0;
  for (const ch of id.slice(PREFIX.length)) {
    const v = ALPHABET.indexOf(ch);
    if (v < 0) return null;
    value = ((value << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out[n++] = (value >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  // The last character carries 2 padding bits which must be zero, so each key has one ID.
  return (value & ((1 << bits) - 1)) === 0 && agentIdOf(out) === id ? out : null;
}
