import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import {
  LocalIdentity, Handshake, consumeInitiation, createResponse, createInitiation, consumeResponse, deriveSessionKeys,
} from '../../src/wireguard/noise.js';
import { CookieGenerator, CookieChecker } from '../../src/wireguard/cookie.js';
import { open, seal, writeNonce } from '../../src/crypto/aead.js';
import { publicKeyOf } from '../../src/crypto/x25519.js';

// Recorded from live handshakes with wireguard-go by scripts/gen-wg-vectors.mjs.
const vectors = JSON.parse(readFileSync(new URL('./wg-vectors.json', import.meta.url), 'utf8'));
const b = (h: string) => Buffer.from(h, 'hex');

function decrypt(key: Uint8Array, msg: Buffer): Buffer | null {
  const nonce = Buffer.alloc(12);
  writeNonce(nonce, Number(msg.readBigUInt64LE(8)));
  const plain = Buffer.alloc(msg.length - 32);
  return open(plain, msg.subarray(16), null, nonce, key) ? plain : null;
}

function expectIcmpEcho(plain: Buffer): void {
  expect(plain[0] >> 4).toBe(4);
  expect(plain[9]).toBe(1); // ICMP
  expect([...plain.subarray(12, 16)]).toEqual([100, 64, 0, 1]);
  expect([...plain.subarray(16, 20)]).toEqual([100, 64, 0, 2]);
}

for (const name of ['withoutPsk', 'withPsk'] as const) {
  const v = vectors[name];
  const local = new LocalIdentity(b(v.ourPrivateKey));
  const wgPublic = publicKeyOf(b(v.wireguardGoPrivateKey));
  const psk = v.presharedKey ? b(v.presharedKey) : undefined;

  describe(`known answers from wireguard-go ${vectors.wireguardGo} (${name})`, () => {
    it('accepts its initiation, reproduces our response byte for byte and decrypts its data', () => {
      const initiation = b(v.responder.initiation);
      expect(new CookieChecker(local.publicKey).checkMac1(initiation)).toBe(true);
      const consumed = consumeInitiation(local, initiation)!;
      expect(Buffer.from(consumed.remoteStatic)).toEqual(Buffer.from(wgPublic));
      const hs = new Handshake(local, wgPublic, psk);
      expect(consumed.apply(hs)).toBe(true);
      const response = createResponse(hs, v.responder.index, b(v.responder.ephemeral))!;
      new CookieGenerator(wgPublic).addMacs(response);
      expect(response.toString('hex')).toBe(v.responder.response);
      const keys = deriveSessionKeys(hs)!;
      const plain = decrypt(keys.receiveKey, b(v.responder.transport))!;
      expect(plain.toString('hex')).toBe(v.responder.plaintext);
      expectIcmpEcho(plain);
    });

    it('reproduces the initiation it accepted, consumes its response and decrypts its data', () => {
      const hs = new Handshake(local, wgPublic, psk);
      const initiation = createInitiation(local, hs, v.initiator.index, Date.now(), b(v.initiator.ephemeral), b(v.initiator.timestamp));
      new CookieGenerator(wgPublic).addMacs(initiation);
      expect(initiation.toString('hex')).toBe(v.initiator.initiation);
      expect(consumeResponse(local, hs, b(v.initiator.response))).toBe(true);
      const keys = deriveSessionKeys(hs)!;
      const keepalive = Buffer.alloc(32);
      keepalive.writeUInt32LE(4, 0);
      keepalive.writeUInt32LE(keys.remoteIndex, 4);
      seal(keepalive.subarray(16), new Uint8Array(0), null, Buffer.alloc(12), keys.sendKey);
      expect(keepalive.toString('hex')).toBe(v.initiator.keepalive);
      const plain = decrypt(keys.receiveKey, b(v.initiator.transport))!;
      expect(plain.toString('hex')).toBe(v.initiator.plaintext);
      expectIcmpEcho(plain);
    });

    it('rejects the same messages when a byte is flipped or the wrong key is used', () => {
      const initiation = b(v.responder.initiation);
      for (const at of [10, 50, 100]) {
        const bad = Buffer.from(initiation);
        bad[at] ^= 0x80;
        const c = consumeInitiation(local, bad);
        expect(c === null || !c.apply(new Handshake(local, wgPublic, psk))).toBe(true);
      }
      const stranger = new LocalIdentity(b(v.wireguardGoPrivateKey));
      expect(consumeInitiation(stranger, initiation)).toBeNull();
      // A wrong preshared key makes our response unverifiable to the initiator: keys differ.
      const hs = new Handshake(local, wgPublic, psk ? undefined : new Uint8Array(32).fill(9));
      consumeInitiation(local, initiation)!.apply(hs);
      createResponse(hs, v.responder.index, b(v.responder.ephemeral));
      const keys = deriveSessionKeys(hs)!;
      expect(decrypt(keys.receiveKey, b(v.responder.transport))).toBeNull();
    });
  });
}
