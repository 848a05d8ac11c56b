import { blake2s as reference } from '@noble/hashes/blake2.js';
import { hmac } from '@noble/hashes/hmac.js';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hash, hmacBlake2s, mac } from '../../src/crypto/blake2s.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('native BLAKE2s', () => {
  it('matches the RFC 7693 test vector for "abc"', () => {
    expect(hex(hash(Buffer.from('abc')))).toBe('508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982');
  });

  it('matches an independent implementation, keyed and unkeyed, at every length around block edges', () => {
    for (const len of [0, 1, 31, 32, 33, 63, 64, 65, 116, 127, 128, 129, 148, 1000]) {
      for (const keyLen of [0, 1, 16, 32]) {
        const input = randomBytes(len);
        const key = randomBytes(keyLen);
        const opts = keyLen ? { key } : {};
        expect(hex(hash(input)), `hash len ${len}`).toBe(hex(reference(input)));
        if (keyLen) expect(hex(mac(key, input)), `mac len ${len} key ${keyLen}`).toBe(hex(reference(input, { ...opts, dkLen: 16 })));
      }
    }
  });

  it('hashes parts as their concatenation, and HMAC matches RFC 2104 over BLAKE2s', () => {
    const a = randomBytes(40), b = randomBytes(90);
    expect(hex(hash(a, b))).toBe(hex(reference(Buffer.concat([a, b]))));
    for (const keyLen of [0, 32, 64, 100]) {
      const key = randomBytes(keyLen);
      expect(hex(hmacBlake2s(key, a, b))).toBe(hex(hmac(reference, key, Buffer.concat([a, b]))));
    }
  });

  it('refuses bad arguments with a clear error instead of crashing', () => {
    expect(() => mac(new Uint8Array(33), new Uint8Array(1))).toThrow(/key at most 32/);
  });
});
