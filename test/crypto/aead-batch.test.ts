import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { OpenBatch, SealBatch } from '../../src/crypto/aead-batch.js';
import { open, seal, writeNonce } from '../../src/crypto/aead.js';
import { Handshake, LocalIdentity, consumeInitiation, createInitiation, consumeResponse, createResponse, deriveSessionKeys } from '../../src/wireguard/noise.js';
import { publicKeyOf } from '../../src/crypto/x25519.js';

const b = (h: string) => Buffer.from(h, 'hex');
const SLOT = 2048;

/** A transport message sealed one packet at a time by libsodium (sodium-native), the reference. */
function referenceMessage(key: Uint8Array, receiver: number, counter: number, plain: Uint8Array): Buffer {
  const msg = Buffer.alloc(32 + plain.length);
  msg.writeUInt32LE(4, 0);
  msg.writeUInt32LE(receiver, 4);
  msg.writeBigUInt64LE(BigInt(counter), 8);
  const nonce = Buffer.alloc(12);
  writeNonce(nonce, counter);
  seal(msg.subarray(16), plain, null, nonce, key);
  return msg;
}

function sealOne(key: Uint8Array, receiver: number, counter: number, plain: Buffer): Buffer {
  const batch = new SealBatch(1);
  const out = Buffer.alloc(plain.length + 32);
  batch.add(key, receiver, counter, 0, plain.length, 0);
  batch.seal(plain, out);
  return out;
}

function openOne(key: Uint8Array, msg: Buffer): Buffer | null {
  const batch = new OpenBatch(1);
  batch.add(key, 0, msg.length);
  const opened = batch.open(msg);
  batch.clear();
  return opened === 1 ? msg.subarray(16, msg.length - 16) : null;
}

describe('RFC 8439 known answers', () => {
  // Appendix A.5: the ciphertext does not depend on the AD, only the tag does. WireGuard
  // transport has no AD, so the tag for it comes from libsodium; the vector's nonce
  // 00000000 0102030405060708 is the nonce of counter 0x0807060504030201.
  const key = b('1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0');
  const plain = b('496e7465726e65742d4472616674732061726520647261667420646f63756d656e74732076616c696420666f722061206d6178696d756d206f6620736978206d6f6e74687320616e64206d617920626520757064617465642c207265706c616365642c206f72206f62736f6c65746564206279206f7468657220646f63756d656e747320617420616e792074696d652e20497420697320696e617070726f70726961746520746f2075736520496e7465726e65742d447261667473206173207265666572656e6365206d6174657269616c206f7220746f2063697465207468656d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67726573732e2fe2809d');
  const cipher = b('64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb24c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c8559797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523eaf4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a1049e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29a6ad5cb4022b02709b');
  const nonce = b('000000000102030405060708');

  it('the vector itself: libsodium reproduces A.5 with its AD and tag', () => {
    const out = Buffer.alloc(plain.length + 16);
    seal(out, plain, b('f33388860000000000004e91'), nonce, key);
    expect(out.toString('hex')).toBe(cipher.toString('hex') + 'eead9d67890cbb22392336fea1851f38');
  });

  it('opens the A.5 ciphertext (counter bytes 01..08 in the header) to its plaintext', () => {
    const tag = Buffer.alloc(plain.length + 16);
    seal(tag, plain, null, nonce, key);
    const msg = Buffer.concat([b('04000000aabbccdd0102030405060708'), cipher, tag.subarray(plain.length)]);
    expect(openOne(key, msg)?.toString('hex')).toBe(plain.toString('hex'));
  });

  it('seals 64 zero bytes under the zero key and counter 0 to ChaCha20 block 1 (A.1 vector #2)', () => {
    const msg = sealOne(new Uint8Array(32), 0, 0, Buffer.alloc(64));
    expect(msg.subarray(0, 16).toString('hex')).toBe('04000000' + '00000000' + '0000000000000000');
    expect(msg.subarray(16, 80).toString('hex')).toBe(
      '9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f',
    );
    const independent = chacha20poly1305(new Uint8Array(32), new Uint8Array(12)).encrypt(new Uint8Array(64));
    expect(msg.subarray(16).toString('hex')).toBe(Buffer.from(independent).toString('hex'));
  });
});

describe('WireGuard known answers from wireguard-go', () => {
  const vectors = JSON.parse(readFileSync(new URL('../wireguard/wg-vectors.json', import.meta.url), 'utf8'));
  for (const name of ['withoutPsk', 'withPsk'] as const) {
    const v = vectors[name];
    it(`${name}: opens its transport messages and seals our keepalive byte for byte`, () => {
      const local = new LocalIdentity(b(v.ourPrivateKey));
      const wgPublic = publicKeyOf(b(v.wireguardGoPrivateKey));
      const psk = v.presharedKey ? b(v.presharedKey) : undefined;

      const responder = new Handshake(local, wgPublic, psk);
      consumeInitiation(local, b(v.responder.initiation))!.apply(responder);
      createResponse(responder, v.responder.index, b(v.responder.ephemeral));
      expect(openOne(deriveSessionKeys(responder)!.receiveKey, b(v.responder.transport))?.toString('hex')).toBe(v.responder.plaintext);

      const initiator = new Handshake(local, wgPublic, psk);
      createInitiation(local, initiator, v.initiator.index, Date.now(), b(v.initiator.ephemeral), b(v.initiator.timestamp));
      expect(consumeResponse(local, initiator, b(v.initiator.response))).toBe(true);
      const keys = deriveSessionKeys(initiator)!;
      expect(sealOne(keys.sendKey, keys.remoteIndex, 0, Buffer.alloc(0)).toString('hex')).toBe(v.initiator.keepalive);
      expect(openOne(keys.receiveKey, b(v.initiator.transport))?.toString('hex')).toBe(v.initiator.plaintext);
    });
  }
});

interface Packet {
  key: number;
  receiver: number;
  counter: number;
  plain: Uint8Array;
}

const packetArb = (keys: number) => fc.record({
  key: fc.integer({ min: 0, max: keys - 1 }),
  receiver: fc.integer({ min: 0, max: 0xffff_ffff }),
  counter: fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.maxSafeInteger().map((c) => Math.abs(c))),
  plain: fc.uint8Array({ minLength: 0, maxLength: 1500 }),
});
const batchArb = fc.array(fc.uint8Array({ minLength: 32, maxLength: 32 }), { minLength: 1, maxLength: 4 })
  .chain((keys) => fc.tuple(fc.constant(keys), fc.array(packetArb(keys.length), { minLength: 1, maxLength: 64 })));

/** Seals the packets as one batch, each into its own slot of a fresh slab. */
function sealAll(keys: Uint8Array[], packets: Packet[]): Buffer {
  const src = Buffer.alloc(packets.length * SLOT);
  const dst = Buffer.alloc(packets.length * SLOT);
  const batch = new SealBatch(64);
  packets.forEach((p, i) => {
    src.set(p.plain, i * SLOT);
    batch.add(keys[p.key], p.receiver, p.counter, i * SLOT, p.plain.length, i * SLOT);
  });
  batch.seal(src, dst);
  return dst;
}

describe('batches against one call per packet', () => {
  it('seal: every message equals libsodium sealing it alone (many keys, runs and interleaved)', () => {
    fc.assert(fc.property(batchArb, ([keys, packets]) => {
      const dst = sealAll(keys, packets);
      packets.forEach((p, i) => {
        const want = referenceMessage(keys[p.key], p.receiver, p.counter, p.plain);
        expect(dst.subarray(i * SLOT, i * SLOT + want.length).equals(want)).toBe(true);
      });
    }), { numRuns: 150 });
  });

  it('open: every message opens in place to its plaintext, as libsodium opens it alone', () => {
    fc.assert(fc.property(batchArb, ([keys, packets]) => {
      const slab = Buffer.alloc(packets.length * SLOT);
      const batch = new OpenBatch(64);
      packets.forEach((p, i) => {
        const msg = referenceMessage(keys[p.key], p.receiver, p.counter, p.plain);
        msg.copy(slab, i * SLOT);
        batch.add(keys[p.key], i * SLOT, msg.length);
      });
      expect(batch.open(slab)).toBe(packets.length);
      packets.forEach((p, i) => {
        expect(batch.ok[i]).toBe(1);
        expect(slab.subarray(i * SLOT + 16, i * SLOT + 16 + p.plain.length).equals(Buffer.from(p.plain))).toBe(true);
      });
    }), { numRuns: 150 });
  });

  it('a tampered packet (counter, ciphertext or tag) or a wrong key fails only itself; its bytes are zeroed', () => {
    fc.assert(fc.property(batchArb, fc.array(fc.nat(), { maxLength: 16 }), ([keys, packets], picks) => {
      const dst = sealAll(keys, packets);
      const spoiled = new Set<number>();
      const wrongKey = new Set<number>();
      for (const pick of picks) {
        const i = pick % packets.length;
        const len = 32 + packets[i].plain.length;
        if (pick % 5 === 0) wrongKey.add(i);
        else if (!spoiled.has(i)) { // one flip per packet: a second one could undo the first
          // Bytes 0..7 (type, receiver) are not authenticated in WireGuard: only 8.. are.
          dst[i * SLOT + 8 + (pick % (len - 8))] ^= 1 << (pick % 8);
          spoiled.add(i);
        }
      }
      const batch = new OpenBatch(64);
      const otherKey = new Uint8Array(32).fill(0xee);
      packets.forEach((p, i) => batch.add(wrongKey.has(i) ? otherKey : keys[p.key], i * SLOT, 32 + p.plain.length));
      const failed = new Set([...spoiled, ...wrongKey]);
      expect(batch.open(dst)).toBe(packets.length - failed.size);
      packets.forEach((p, i) => {
        const plain = dst.subarray(i * SLOT + 16, i * SLOT + 16 + p.plain.length);
        expect(batch.ok[i]).toBe(failed.has(i) ? 0 : 1);
        if (failed.has(i)) expect(plain.every((x) => x === 0)).toBe(true);
        else expect(plain.equals(Buffer.from(p.plain))).toBe(true);
      });
    }), { numRuns: 150 });
  });

  it('matches the single-packet open of src/crypto/aead.ts on the same messages', () => {
    const key = new Uint8Array(32).fill(3);
    const msg = sealOne(key, 7, 12345, Buffer.from('x'.repeat(100)));
    const nonce = Buffer.alloc(12);
    writeNonce(nonce, 12345);
    const plain = Buffer.alloc(100);
    expect(open(plain, msg.subarray(16), null, nonce, key)).toBe(true);
    expect(plain.toString()).toBe('x'.repeat(100));
  });
});

describe('bad arguments are refused before any byte is written', () => {
  const key = new Uint8Array(32).fill(1);

  it('seal: output or input out of bounds, overlapping, counter beyond 2^53', () => {
    const cases: [string, (s: SealBatch) => void, number][] = [
      ['output past the end', (s) => s.add(key, 1, 0, 0, 100, 4000), 4096],
      ['input past the end', (s) => s.add(key, 1, 0, 4090, 100, 0), 4096],
      ['negative offset', (s) => s.add(key, 1, 0, -1, 10, 0), 4096],
      ['counter 2^53', (s) => s.add(key, 1, 2 ** 53, 0, 10, 200), 4096],
      ['counter not an integer', (s) => s.add(key, 1, 1.5, 0, 10, 200), 4096],
    ];
    for (const [what, add, size] of cases) {
      const src = Buffer.alloc(size, 0xaa);
      const dst = Buffer.alloc(size);
      const batch = new SealBatch(2);
      batch.add(key, 1, 0, 0, 16, 2048); // a good packet first: it must not be sealed either
      add(batch);
      expect(() => batch.seal(src, dst), what).toThrow(RangeError);
      expect(dst.every((x) => x === 0), what).toBe(true);
    }
    const same = Buffer.alloc(4096);
    const batch = new SealBatch(1);
    batch.add(key, 1, 0, 0, 100, 50);
    expect(() => batch.seal(same, same)).toThrow(/overlaps/);
  });

  it('open: short or out-of-bounds messages', () => {
    for (const [off, len] of [[0, 31], [4000, 200], [-4, 64]]) {
      const slab = Buffer.alloc(4096, 0x55);
      const batch = new OpenBatch(1);
      batch.add(key, off, len);
      expect(() => batch.open(slab)).toThrow(RangeError);
      expect(slab.every((x) => x === 0x55)).toBe(true);
    }
  });
});
