import { describe, expect, it } from 'vitest';
import { floodDatagrams } from '../src/lab/flood.js';
import { CookieChecker } from '../src/wireguard/cookie.js';
import { LocalIdentity, consumeInitiation } from '../src/wireguard/noise.js';
import { DiscoCodec, isDisco } from '../src/paths/disco.js';
import { parseHello, isRelayFrame, FRAME_SEND } from '../src/relay/protocol.js';
import { generatePrivateKey } from '../src/crypto/x25519.js';
import { encodeKey } from '../src/crypto/keys.js';
import { Identity } from '../src/identity/identity.js';

describe('flood datagrams', () => {
  const victim = new LocalIdentity(generatePrivateKey());
  const key = encodeKey(victim.publicKey);

  it('handshake: real initiations with a valid mac1 for the target, distinct sender indices, from a stranger', () => {
    const d = floodDatagrams({ kind: 'handshake', target: '192.0.2.2:1', rate: 0, durationMs: 1, key, distinct: 64 });
    const checker = new CookieChecker(victim.publicKey);
    expect(d.every((m) => m.length === 148 && m[0] === 1 && checker.checkMac1(m))).toBe(true);
    expect(new Set(d.map((m) => m.readUInt32LE(4))).size).toBe(64);
    // It decrypts (the receiver pays the DH) and names a static key the victim does not know.
    expect(consumeInitiation(victim, d[0]!)).not.toBeNull();
    expect(new CookieChecker(new LocalIdentity(generatePrivateKey()).publicKey).checkMac1(d[0]!)).toBe(false);
  });

  it('disco: carries the known member key and fails authentication', () => {
    const member = new LocalIdentity(generatePrivateKey());
    const d = floodDatagrams({ kind: 'disco', target: '192.0.2.2:1', rate: 0, durationMs: 1, key: encodeKey(member.publicKey), distinct: 8 });
    const codec = new DiscoCodec(victim.privateKey, victim.publicKey);
    for (const m of d) {
      expect(isDisco(m, 0, m.length)).toBe(true);
      expect(Buffer.compare(m.subarray(1, 33), Buffer.from(member.publicKey))).toBe(0);
      expect(codec.open(m, 0, m.length)).toBeNull();
    }
  });

  it('relay-hello: well-formed, fresh, never verifies; relay-send: SEND frames to the destination', () => {
    const now = Date.now();
    const hellos = floodDatagrams({ kind: 'relay-hello', target: '192.0.2.2:1', rate: 0, durationMs: 1, distinct: 8 }, undefined, now);
    for (const h of hellos) {
      const p = parseHello(h);
      expect(p?.timestamp).toBe(now);
      expect(p?.verify()).toBe(false);
    }
    const member = Identity.generate();
    const sends = floodDatagrams({ kind: 'relay-send', target: '192.0.2.2:1', rate: 0, durationMs: 1, size: 100, distinct: 4 }, member);
    expect(sends.every((s) => s.length === 133 && s[0] === FRAME_SEND && Buffer.compare(s.subarray(1, 33), Buffer.from(member.wgPublicKey)) === 0)).toBe(true);
  });

  it('garbage: no protocol first byte', () => {
    const g = floodDatagrams({ kind: 'garbage', target: '192.0.2.2:1', rate: 0, durationMs: 1, size: 200, distinct: 16 });
    expect(g.every((m) => m.length === 200 && !isRelayFrame(m, 0, m.length) && !isDisco(m, 0, m.length) && m[0]! > 4)).toBe(true);
  });
});
