import { describe, expect, it } from 'vitest';
import { ed25519 } from '@noble/curves/ed25519.js';
import { publicKeyOfSeed, randomSeed, signWith, signingKeyOf, verifySignature } from '../../src/identity/ed25519.js';
import { Identity } from '../../src/identity/identity.js';

describe('key caches (verified Ed25519 key objects, X25519 conversions)', () => {
  it('a cached key still refuses a wrong signature, message or key, and a forged signature caches nothing', () => {
    const seed = randomSeed();
    const pub = publicKeyOfSeed(seed);
    const message = Buffer.from('agentvpn heartbeat');
    const signature = signWith(signingKeyOf(seed), message);
    const forged = Buffer.from(signature);
    forged[5] ^= 1;
    expect(verifySignature(pub, message, forged)).toBe(false); // not cached: it did not verify
    expect(verifySignature(pub, message, signature)).toBe(true);
    const rounds = 2_000;
    let t0 = performance.now();
    for (let i = 0; i < rounds; i++) verifySignature(pub, message, signature);
    const cachedUs = ((performance.now() - t0) * 1000) / rounds;
    const fresh = Array.from({ length: 200 }, () => {
      const s = randomSeed();
      return { pub: publicKeyOfSeed(s), sig: signWith(signingKeyOf(s), message) };
    });
    t0 = performance.now();
    for (const f of fresh) verifySignature(f.pub, message, f.sig);
    const firstUs = ((performance.now() - t0) * 1000) / fresh.length;
    console.log(`Ed25519 verify: ${firstUs.toFixed(0)} us for a key seen first, ${cachedUs.toFixed(0)} us for a cached key`);
    expect(verifySignature(pub, message, forged)).toBe(false);
    expect(verifySignature(pub, Buffer.from('agentvpn heartbeaT'), signature)).toBe(false);
    const other = publicKeyOfSeed(randomSeed());
    expect(verifySignature(other, message, signature)).toBe(false);
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
