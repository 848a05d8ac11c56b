import { describe, it, expect } from 'vitest';
import {
  LocalIdentity, Handshake, consumeInitiation, createResponse, createInitiation, consumeResponse, deriveSessionKeys,
} from '../../src/wireguard/noise.js';
import { generatePrivateKey } from '../../src/crypto/x25519.js';
import { timers } from '../../src/wireguard/constants.js';

function pair(psk?: Uint8Array) {
  const a = new LocalIdentity(generatePrivateKey());
  const b = new LocalIdentity(generatePrivateKey());
  return { a, b, hsA: new Handshake(a, b.publicKey, psk), hsB: new Handshake(b, a.publicKey, psk) };
}

describe('Noise IKpsk2 handshake', () => {
  it('derives matching transport keys on both sides', () => {
    const { a, b, hsA, hsB } = pair(generatePrivateKey());
    const init = createInitiation(a, hsA, 7);
    expect(consumeInitiation(b, init)!.apply(hsB)).toBe(true);
    const resp = createResponse(hsB, 9)!;
    expect(consumeResponse(a, hsA, resp)).toBe(true);
    const ka = deriveSessionKeys(hsA)!;
    const kb = deriveSessionKeys(hsB)!;
    expect(Buffer.from(ka.sendKey)).toEqual(Buffer.from(kb.receiveKey));
    expect(Buffer.from(ka.receiveKey)).toEqual(Buffer.from(kb.sendKey));
    expect([ka.localIndex, ka.remoteIndex, kb.localIndex, kb.remoteIndex]).toEqual([7, 9, 9, 7]);
    expect(ka.isInitiator && !kb.isInitiator).toBe(true);
    expect(hsA.stage).toBe('zeroed'); // handshake secrets are erased once keys exist
  });

  it('rejects a replayed initiation (timestamp not newer) and one that comes too fast', () => {
    const { a, b, hsA, hsB } = pair();
    const t0 = 1_000_000;
    const init = createInitiation(a, hsA, 1, t0);
    expect(consumeInitiation(b, init, t0)!.apply(hsB)).toBe(true);
    expect(consumeInitiation(b, init, t0 + 60_000)!.apply(hsB)).toBe(false);
    const later = createInitiation(a, hsA, 2, t0 + 5_000);
    expect(consumeInitiation(b, later, t0 + 1)!.apply(hsB)).toBe(false); // within the flood interval
    expect(consumeInitiation(b, later, t0 + timers.handshakeInitiationRate + 1)!.apply(hsB)).toBe(true);
  });

  it('rejects a response for another handshake, a tampered response and a mismatched preshared key', () => {
    const { a, b, hsA, hsB } = pair(new Uint8Array(32).fill(1));
    const init = createInitiation(a, hsA, 1);
    consumeInitiation(b, init)!.apply(hsB);
    const resp = createResponse(hsB, 2)!;
    const tampered = Buffer.from(resp);
    tampered[50] ^= 1;
    expect(consumeResponse(a, hsA, tampered)).toBe(false);
    const wrongIndex = Buffer.from(resp);
    wrongIndex.writeUInt32LE(99, 8);
    expect(consumeResponse(a, hsA, wrongIndex)).toBe(false);

    const c = pair(new Uint8Array(32).fill(1));
    const hsC = new Handshake(c.b, c.a.publicKey, new Uint8Array(32).fill(2));
    consumeInitiation(c.b, createInitiation(c.a, c.hsA, 1))!.apply(hsC);
    expect(consumeResponse(c.a, c.hsA, createResponse(hsC, 2)!)).toBe(false);
  });

  it('refuses an initiation from a key it does not know once the static is checked', () => {
    const { a, b, hsA } = pair();
    const other = new LocalIdentity(generatePrivateKey());
    const consumed = consumeInitiation(b, createInitiation(a, hsA, 1))!;
    expect(consumed.apply(new Handshake(b, other.publicKey))).toBe(false);
  });
});
