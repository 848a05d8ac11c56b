import { x25519 } from '@noble/curves/ed25519.js';
import { randomBytes } from 'node:crypto';

/** A new X25519 private key, clamped as `wg genkey` prints it. */
export function generatePrivateKey(): Uint8Array {
  const k = new Uint8Array(randomBytes(32));
  k[0] &= 248;
  k[31] = (k[31] & 127) | 64;
  return k;
}

export function publicKeyOf(privateKey: Uint8Array): Uint8Array {
  return x25519.getPublicKey(privateKey);
}

/** Diffie-Hellman; throws on an all-zero result (a low-order point), as WireGuard requires. */
export function dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
  return x25519.getSharedSecret(privateKey, publicKey);
}
