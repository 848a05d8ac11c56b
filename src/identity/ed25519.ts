import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { ed25519 } from '@noble/curves/ed25519.js';

/**
 * Raw Ed25519 keys (32-byte seeds and public keys) for node:crypto, which signs and verifies
 * much faster than pure JS. Shared by the identity and its rotation statements.
 */

/** DER prefixes that wrap raw Ed25519 keys for node:crypto. */
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export function signingKeyOf(seed: Uint8Array): KeyObject {
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

export function publicKeyOfSeed(seed: Uint8Array): Uint8Array {
  return ed25519.getPublicKey(seed);
}

export function randomSeed(): Uint8Array {
  return ed25519.utils.randomSecretKey();
}

export function signWith(key: KeyObject, message: Uint8Array): Uint8Array {
  return sign(null, message, key);
}

/**
 * Public keys whose signatures verified lately, as node:crypto key objects: building one costs
 * about as much as the verification itself (measured: 162 µs with the build, 86 µs without), and
 * a registry checks the same members' keys on every heartbeat and read. ~1.2 KB each, so at most
 * ~20 MB; least recently used goes first. Only keys that verified a signature get in, but anyone can
 * make key pairs and sign (a join request, before membership): a stranger can churn the cache and
 * so cancel the speed-up, never grow it past its size.
 */
const KEY_CACHE_SIZE = 16_384;
const verifiedKeys = new Map<string, KeyObject>();

/** The key object of a public key: cached, or built (null for a malformed key). */
function keyObjectOf(publicKey: Uint8Array, cacheKey: string): KeyObject | null {
  try {
    return verifiedKeys.get(cacheKey) ?? createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' });
  } catch {
    return null;
  }
}

function remember(cacheKey: string, key: KeyObject): void {
  verifiedKeys.delete(cacheKey); // re-inserted last: Map order is the recency order
  verifiedKeys.set(cacheKey, key);
  if (verifiedKeys.size > KEY_CACHE_SIZE) verifiedKeys.delete(verifiedKeys.keys().next().value!);
}

const cacheKeyOf = (publicKey: Uint8Array) => Buffer.from(publicKey.buffer, publicKey.byteOffset, 32).toString('latin1');

/** Checks an Ed25519 signature; false (never throws) on malformed keys or signatures. */
export function verifySignature(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  const cacheKey = cacheKeyOf(publicKey);
  const key = keyObjectOf(publicKey, cacheKey);
  if (!key) return false;
  try {
    const ok = verify(null, message, key, signature);
    if (ok) remember(cacheKey, key);
    return ok;
  } catch {
    return false;
  }
}

/**
 * verifySignature on libuv's thread pool: the check (~90 µs) leaves the event loop free, which is
 * what a busy registry is short of (its requests queue behind one thread; the pool has four).
 */
export function verifySignatureAsync(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): Promise<boolean> {
  if (publicKey.length !== 32 || signature.length !== 64) return Promise.resolve(false);
  const cacheKey = cacheKeyOf(publicKey);
  const key = keyObjectOf(publicKey, cacheKey);
  if (!key) return Promise.resolve(false);
  return new Promise((resolve) => {
    try {
      verify(null, message, key, signature, (err, ok) => {
        if (!err && ok) remember(cacheKey, key);
        resolve(!err && ok);
      });
    } catch {
      resolve(false);
    }
  });
}
