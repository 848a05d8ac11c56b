import { describe, expect, it } from 'vitest';
import { dh, generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';

const hex = (h: string) => Uint8Array.from(Buffer.from(h, 'hex'));

describe('X25519 (libsodium)', () => {
  it('matches RFC 7748 section 6.1', () => {
    const alice = hex('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a');
    const bob = hex('5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb');
    expect(Buffer.from(publicKeyOf(alice)).toString('hex')).toBe('8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a');
    expect(Buffer.from(publicKeyOf(bob)).toString('hex')).toBe('de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f');
    const shared = '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742';
    expect(Buffer.from(dh(alice, publicKeyOf(bob))).toString('hex')).toBe(shared);
    expect(Buffer.from(dh(bob, publicKeyOf(alice))).toString('hex')).toBe(shared);
  });

  it('refuses low-order points (an all-zero secret)', () => {
    const k = generatePrivateKey();
    expect(() => dh(k, new Uint8Array(32))).toThrow(/low-order/);
    const one = new Uint8Array(32);
    one[0] = 1;
    expect(() => dh(k, one)).toThrow(/low-order/);
  });

  it('generates clamped keys', () => {
    for (let i = 0; i < 50; i++) {
      const k = generatePrivateKey();
      expect(k[0]! & 7).toBe(0);
      expect(k[31]! & 0x80).toBe(0);
      expect(k[31]! & 0x40).toBe(0x40);
    }
  });
});
