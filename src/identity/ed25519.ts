import sodium from 'sodium-native';

/**
 * Ed25519 over raw keys (32-byte seeds and public keys), through libsodium: shared by the
 * identity, its rotation statements, audit checkpoints and the relay's hellos.
 *
 * Measured here: a check takes 39 µs of CPU, where node:crypto (OpenSSL) took 95 µs and needed a
 * key object that cost another 77 µs to build on a key's first contact; a signature takes 13 µs
 * (29 µs). The registry is CPU-bound when busy, so CPU, not where it is spent, is what matters:
 * checks run on the caller's thread, synchronously.
 *
 * libsodium's check is stricter than OpenSSL's: it also refuses small-order and non-canonical
 * public keys and a small-order R. Honest keys and signatures never are either.
 */

/** A signing key: libsodium's 64-byte secret key (seed, then public key). */
export interface SigningKey {
  readonly secret: Buffer;
  readonly publicKey: Buffer;
}

const SEED_BYTES = 32;
const PUBLIC_KEY_BYTES = 32;
const SECRET_KEY_BYTES = 64;
const SIGNATURE_BYTES = 64;

export function signingKeyOf(seed: Uint8Array): SigningKey {
  if (seed.length !== SEED_BYTES) throw new RangeError(`an Ed25519 seed is ${SEED_BYTES} bytes, not ${seed.length}`);
  // Plain memory, as the seed it comes from (identity.ts holds both): libsodium's guarded
  // allocations cost page mappings per key, and a load generator holds thousands of keys.
  const secret = Buffer.alloc(SECRET_KEY_BYTES);
  const publicKey = Buffer.alloc(PUBLIC_KEY_BYTES);
  sodium.crypto_sign_seed_keypair(publicKey, secret, seed);
  return { secret, publicKey };
}

export function publicKeyOfSeed(seed: Uint8Array): Uint8Array {
  return signingKeyOf(seed).publicKey;
}

export function randomSeed(): Uint8Array {
  const seed = Buffer.alloc(SEED_BYTES);
  sodium.randombytes_buf(seed);
  return seed;
}

export function signWith(key: SigningKey, message: Uint8Array): Uint8Array {
  const signature = Buffer.alloc(SIGNATURE_BYTES);
  sodium.crypto_sign_detached(signature, message, key.secret);
  return signature;
}

/** Checks an Ed25519 signature; false (never throws) on malformed keys or signatures. */
export function verifySignature(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== PUBLIC_KEY_BYTES || signature.length !== SIGNATURE_BYTES) return false;
  return sodium.crypto_sign_verify_detached(signature, message, publicKey);
}
