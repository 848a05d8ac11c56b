import { cryptoAddon as addon } from './addon.js';

/**
 * The hash and key-derivation primitives of the WireGuard construction (all BLAKE2s based).
 * BLAKE2s itself runs in C (native/crypto/blake2s.c): a handshake flood is priced in mac1 checks,
 * and there it is ~10x cheaper than in JavaScript.
 */

const NO_KEY = new Uint8Array(0);
const BLOCK = 64;

function joined(parts: Uint8Array[]): Uint8Array {
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

/** HASH(a || b || ...): BLAKE2s-256. */
export function hash(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(32);
  addon.blake2s(out, NO_KEY, joined(parts));
  return out;
}

/** MAC(key, input): keyed BLAKE2s with a 16-byte output (used for mac1, mac2 and cookies). */
export function mac(key: Uint8Array, input: Uint8Array): Uint8Array {
  const out = new Uint8Array(16);
  addon.blake2s(out, key, input);
  return out;
}

/** MAC(key, input) written into `out` (16 bytes): the allocation-free form for the packet path. */
export function macInto(out: Uint8Array, key: Uint8Array, input: Uint8Array): void {
  addon.blake2s(out, key, input);
}

/** HMAC-BLAKE2s (RFC 2104 over BLAKE2s-256): the HKDF building block, not keyed BLAKE2s. */
export function hmacBlake2s(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const k = new Uint8Array(BLOCK);
  k.set(key.length > BLOCK ? hash(key) : key);
  const inner = new Uint8Array(BLOCK);
  const outer = new Uint8Array(BLOCK);
  for (let i = 0; i < BLOCK; i++) {
    inner[i] = k[i] ^ 0x36;
    outer[i] = k[i] ^ 0x5c;
  }
  return hash(outer, hash(inner, ...parts));
}

const ONE = Uint8Array.of(1);
const TWO = Uint8Array.of(2);
const THREE = Uint8Array.of(3);

/** HKDF with HMAC-BLAKE2s, returning 1, 2 or 3 derived 32-byte values. */
export function kdf(n: 1 | 2 | 3, chainingKey: Uint8Array, input: Uint8Array): Uint8Array[] {
  const prk = hmacBlake2s(chainingKey, input);
  const t1 = hmacBlake2s(prk, ONE);
  if (n === 1) return [t1];
  const t2 = hmacBlake2s(prk, t1, TWO);
  if (n === 2) return [t1, t2];
  return [t1, t2, hmacBlake2s(prk, t2, THREE)];
}
