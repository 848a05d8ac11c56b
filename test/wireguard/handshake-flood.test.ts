import { describe, expect, it, vi } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { CookieGenerator } from '../../src/wireguard/cookie.js';
import { ENDPOINT_SIZE, makeEndpoint } from '../../src/net/endpoint.js';
import { UdpEndpoint } from '../../src/wireguard/endpoint.js';
import { Handshake, LocalIdentity, createInitiation } from '../../src/wireguard/noise.js';
import { deliver, ipv4Packet, makeSide, sendFromTun, type Side } from './memory-link.js';

/**
 * Initiations with a valid mac1 for `responder`: anyone who knows a public key can make them. One
 * real initiation, then only the sender index changes and mac1 is recomputed, as a flooder would.
 */
function validMac1Initiations(responder: Uint8Array, n: number): Buffer[] {
  const stranger = new LocalIdentity(generatePrivateKey());
  const msg = createInitiation(stranger, new Handshake(stranger, responder), 1);
  const macs = new CookieGenerator(responder);
  return Array.from({ length: n }, (_, i) => {
    const m = Buffer.from(msg);
    m.writeUInt32LE(i + 2, 4);
    macs.addMacs(m);
    return m;
  });
}

/** One UDP batch to `to`: each datagram with its own source endpoint. */
function deliverMixed(to: Side, datagrams: [Buffer, Buffer][]): void {
  const slot = 2048;
  const slab = Buffer.alloc(slot * datagrams.length);
  const lens = new Int32Array(datagrams.length);
  const addrs = Buffer.alloc(ENDPOINT_SIZE * datagrams.length);
  datagrams.forEach(([m, ep], i) => {
    m.copy(slab, i * slot);
    lens[i] = m.length;
    ep.copy(addrs, i * ENDPOINT_SIZE);
  });
  to.device.handleUdpBatch(slab, slot, lens, addrs, datagrams.length);
}

describe('handshake flood (issue 7 class 3)', () => {
  it('valid-mac1 initiations from one source or 10,000 cost a map lookup or a mac1 check and a copy each: data flows, cookie replies stay within budget, a real peer still rekeys', () => {
    const aKey = generatePrivateKey();
    const bKey = generatePrivateKey();
    const sides: Side[] = [];
    const a = makeSide(aKey, [192, 0, 2, 1], 51820, () => [sides[1].inbox]);
    const b = makeSide(bKey, [192, 0, 2, 2], 51821, () => [sides[0].inbox]);
    sides.push(a, b);
    a.device.addPeer({ publicKey: publicKeyOf(bKey), endpoint: new UdpEndpoint(b.endpoint), allowedIps: [parsePrefix('100.64.0.2/32')!] });
    const aOnB = b.device.addPeer({ publicKey: publicKeyOf(aKey), allowedIps: [parsePrefix('100.64.0.1/32')!] });
    const data = (i: number) => ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from(`data ${i}`));
    sendFromTun(a, [data(0)]);
    for (let i = 0; i < 5; i++) deliver(b, a), deliver(a, b);
    expect(b.tunOut.length).toBe(1);

    const attacker = makeEndpoint(Uint8Array.of(203, 0, 113, 66), 4444);
    /** 2001:db8:0:i::1, a /64 each: sources a per-source budget cannot tell apart from real peers. */
    const manySources = Array.from({ length: 10_000 }, (_, i) => {
      const addr = Buffer.alloc(16);
      addr.writeUInt32BE(0x20010db8, 0);
      addr.writeUInt32BE(i, 4);
      addr[15] = 1;
      return makeEndpoint(addr, 4444);
    });
    const flood = validMac1Initiations(publicKeyOf(bKey), 20_000);
    const start = Date.now();
    let sent = 1;
    /**
     * 20,000 flood messages in batches of 64, one data packet from A in each, and the handshake work
     * getting a 1 ms turn only every 10 batches (a loop busy with packets). Returns the drops it caused.
     */
    const run = (source: (i: number) => Buffer, t0: number) => {
      const before = { ...b.device.dropped };
      for (let round = 0; round * 64 < flood.length; round++) {
        vi.setSystemTime(t0 + round);
        sendFromTun(a, [data(sent++)]);
        const batch: [Buffer, Buffer][] = b.inbox.splice(0).map((m) => [m, a.endpoint]);
        flood.slice(round * 64, round * 64 + 64).forEach((m, i) => batch.push([m, source(round * 64 + i)]));
        deliverMixed(b, batch);
        if (round % 10 === 0) b.device.processHandshakes(1);
      }
      b.device.processHandshakes();
      const d = Object.fromEntries(Object.entries(b.device.dropped).map(([k, v]) => [k, v - before[k as keyof typeof before]]));
      // Every flood message is accounted for.
      expect(d.rateLimited + d.handshakeShed + d.cookieSent + d.cookieShed + d.unknownPeer + d.handshakeInvalid).toBe(flood.length);
      return d;
    };
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const one = run(() => attacker, start);
      console.log(`one source, ${flood.length} initiations: data ${b.tunOut.length}/${sent}; at the door ${one.rateLimited}, queue full ${one.handshakeShed}, cookies sent ${one.cookieSent} (shed ${one.cookieShed}), DH ${one.unknownPeer}`);
      expect(b.tunOut.length).toBe(sent); // no data packet lost to the flood
      expect(one.rateLimited).toBeGreaterThan(19_000); // the door: a map lookup each, not even mac1
      expect(one.cookieSent).toBeLessThanOrEqual(8); // one source: a burst of 4, then 2 a second
      expect(one.unknownPeer).toBeLessThanOrEqual(500); // Diffie-Hellmans only until "under load"

      const t = performance.now();
      const many = run((i) => manySources[i % manySources.length], start + 10_000);
      const seconds = (performance.now() - t) / 1000; // budgets refill on the real monotonic clock
      console.log(`10,000 sources, ${flood.length} initiations: data ${b.tunOut.length}/${sent}; queue full ${many.handshakeShed}, cookies sent ${many.cookieSent} (shed ${many.cookieShed}), DH ${many.unknownPeer}`);
      expect(b.tunOut.length).toBe(sent);
      expect(many.handshakeShed).toBeGreaterThan(1_000); // the queue was full: dropped after a mac1 check
      expect(many.cookieSent).toBeLessThanOrEqual(2_000 + Math.ceil(2_000 * seconds)); // the total budget: a burst of 2,000, 2,000 a second
      expect(many.unknownPeer).toBeLessThanOrEqual(500);

      // A rekeys in the middle of the flood: its initiation comes from a known endpoint (its own lane),
      // gets a cookie (its own per-source budget), and the retransmission with mac2 completes.
      vi.setSystemTime(start + 131_000);
      sendFromTun(a, [data(sent++)]);
      const before = aOnB.handshakes;
      for (let i = 0; i < 20 && aOnB.handshakes === before; i++) {
        const batch: [Buffer, Buffer][] = b.inbox.splice(0).map((m) => [m, a.endpoint]);
        for (const m of flood.slice(i * 64, i * 64 + 64)) batch.push([m, attacker]);
        deliverMixed(b, batch);
        b.device.processHandshakes(1);
        deliver(a, b);
        const peerOnA = a.device.allPeers()[0];
        if (peerOnA.nextRetransmitAt !== Infinity) {
          vi.setSystemTime(Math.max(Date.now(), peerOnA.nextRetransmitAt + 1));
          a.device.tick(Date.now());
        }
      }
      expect(aOnB.handshakes).toBe(before + 1);
    } finally {
      vi.useRealTimers();
    }
  });
});
