import { blake2s } from '@noble/hashes/blake2.js';
import { hmac } from '@noble/hashes/hmac.js';

/** The hash and key-derivation primitives of the WireGuard construction (all BLAKE2s based). */

/** HASH(a || b || ...): BLAKE2s-256. */
export function hash(...parts: Uint8Array[]): Uint8Array {
  const h = blake2s.create();
  for (const p of parts) h.update(p);
  return h.digest();
}

/** MAC(key, input): keyed BLAKE2s with a 16-byte output (used for mac1, mac2 and cookies). */
export function mac(key: Uint8Array, input: Uint8Array): Uint8Array {
  return blake2s(input, { key, dkLen: 16 });
}

/** HMAC-BLAKE2s: the HKDF building block (a real HMAC, not keyed BLAKE2s). */
export function hmacBlake2s(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = hmac.create(blake2s, key);
  for (const p of parts) h.update(p);
  return h.digest();
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
