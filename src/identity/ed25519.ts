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

/** Checks an Ed25519 signature; false (never throws) on malformed keys or signatures. */
export function verifySignature(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    return verify(null, message, createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' }), signature);
  } catch {
    return false;
  }
}
