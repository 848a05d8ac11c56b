import { describe, expect, it } from 'vitest';
import { ed25519 } from '@noble/curves/ed25519.js';
import { publicKeyOfSeed, randomSeed, signWith, signingKeyOf, verifySignature } from '../../src/identity/ed25519.js';
import { Identity } from '../../src/identity/identity.js';

describe('Ed25519 checks and the X25519 conversion cache', () => {
  it('Ed25519 (libsodium) refuses a wrong signature, message or key, a malformed length, and a small-order key', () => {
    const seed = randomSeed();
    const pub = publicKeyOfSeed(seed);
    expect(Buffer.from(pub)).toEqual(Buffer.from(ed25519.getPublicKey(seed))); // the same key as noble derives
    const message = Buffer.from('agentvpn heartbeat');
    const signature = signWith(signingKeyOf(seed), message);
    expect(ed25519.verify(signature, message, pub)).toBe(true); // interoperable with another implementation
    const forged = Buffer.from(signature);
    forged[5] ^= 1;
    expect(verifySignature(pub, message, forged)).toBe(false);
    expect(verifySignature(pub, message, signature)).toBe(true);
    const rounds = 2_000;
    const t0 = performance.now();
    for (let i = 0; i < rounds; i++) verifySignature(pub, message, signature);
    console.log(`Ed25519 verify: ${(((performance.now() - t0) * 1000) / rounds).toFixed(0)} us`);
    expect(verifySignature(pub, Buffer.from('agentvpn heartbeaT'), signature)).toBe(false);
    expect(verifySignature(publicKeyOfSeed(randomSeed()), message, signature)).toBe(false);
    expect(verifySignature(pub.subarray(0, 31), message, signature)).toBe(false);
    expect(verifySignature(pub, message, signature.subarray(0, 63))).toBe(false);
    const identityPoint = Buffer.alloc(32);
    identityPoint[0] = 1; // the neutral element: every "signature" (R = identity, S = 0) would verify under OpenSSL's rules
    const trivial = Buffer.alloc(64);
    trivial[0] = 1;
    expect(verifySignature(identityPoint, message, trivial)).toBe(false);
    // A key in a larger buffer (an offset view) is read as its 32 bytes only.
    const padded = Buffer.concat([Buffer.alloc(7, 9), Buffer.from(pub), Buffer.alloc(3, 1)]);
    expect(verifySignature(padded.subarray(7, 39), message, signature)).toBe(true);
  });

  it('a converted X25519 key is handed out as a copy: a caller that changes it cannot poison the cache', () => {
    const pub = publicKeyOfSeed(randomSeed());
    const expected = ed25519.utils.toMontgomery(pub);
    const first = Identity.wgPublicKeyOf(pub);
    first.fill(0);
    const second = Identity.wgPublicKeyOf(pub);
    expect(Buffer.from(second)).toEqual(Buffer.from(expected));
    second.fill(1);
    expect(Buffer.from(Identity.wgPublicKeyOf(pub))).toEqual(Buffer.from(expected));
  });

  it('converts as noble does, and refuses (never caches) what is not a key: a non-point, a small-order point', () => {
    for (let i = 0; i < 50; i++) {
      const pub = publicKeyOfSeed(randomSeed());
      expect(Buffer.from(Identity.wgPublicKeyOf(pub))).toEqual(Buffer.from(ed25519.utils.toMontgomery(pub)));
    }
    const notAPoint = Buffer.alloc(32, 0xff);
    notAPoint[31] = 0x7f;
    const identityPoint = Buffer.alloc(32);
    identityPoint[0] = 1; // y = 1: the neutral element, of order 1
    for (const bad of [notAPoint, identityPoint]) {
      expect(() => Identity.wgPublicKeyOf(bad)).toThrow();
      expect(() => Identity.wgPublicKeyOf(bad)).toThrow(); // not cached by the first attempt
    }
  });
});
