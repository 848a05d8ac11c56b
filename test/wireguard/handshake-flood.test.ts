import { describe, expect, it, vi } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { CookieGenerator } from '../../src/wireguard/cookie.js';
import { ENDPOINT_SIZE, makeEndpoint } from '../../src/wireguard/endpoint.js';
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
  it('valid-mac1 initiations cost the packet loop a mac1 check and a copy each: data flows, cookie replies stay within budget, a real peer still rekeys', () => {
    const aKey = generatePrivateKey();
    const bKey = generatePrivateKey();
    const sides: Side[] = [];
    const a = makeSide(aKey, [192, 0, 2, 1], 51820, () => [sides[1].inbox]);
    const b = makeSide(bKey, [192, 0, 2, 2], 51821, () => [sides[0].inbox]);
    sides.push(a, b);
    a.device.addPeer({ publicKey: publicKeyOf(bKey), endpoint: b.endpoint, allowedIps: [parsePrefix('100.64.0.2/32')!] });
    const aOnB = b.device.addPeer({ publicKey: publicKeyOf(aKey), allowedIps: [parsePrefix('100.64.0.1/32')!] });
    const data = (i: number) => ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from(`data ${i}`));
    sendFromTun(a, [data(0)]);
    for (let i = 0; i < 5; i++) deliver(b, a), deliver(a, b);
    expect(b.tunOut.length).toBe(1);

    const attacker = makeEndpoint(Uint8Array.of(203, 0, 113, 66), 4444);
    const flood = validMac1Initiations(publicKeyOf(bKey), 20_000);
    const start = Date.now();
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      // 20,000 flood messages in batches of 64, one data packet from A in each, and the handshake
      // work getting a 1 ms turn only every 10 batches (a loop busy with packets).
      let sent = 1;
      for (let round = 0; round * 64 < flood.length; round++) {
        vi.setSystemTime(start + round);
        sendFromTun(a, [data(sent++)]);
        const batch: [Buffer, Buffer][] = [];
        for (const m of b.inbox.splice(0)) batch.push([m, a.endpoint]);
        for (const m of flood.slice(round * 64, round * 64 + 64)) batch.push([m, attacker]);
        deliverMixed(b, batch);
        if (round % 10 === 0) b.device.processHandshakes(1);
      }
      b.device.processHandshakes();
      const d = b.device.dropped;
      console.log(`flood of ${flood.length}: data delivered ${b.tunOut.length}/${sent}, shed ${d.handshakeShed}, cookies sent ${d.cookieSent}, cookie replies shed ${d.cookieShed}`);
      expect(b.tunOut.length).toBe(sent); // no data packet lost to the flood
      expect(d.handshakeShed).toBeGreaterThan(1_000); // the queue was full: dropped at the cost of a mac1 check
      // Every flood message is accounted for, and only the few before "under load" cost a Diffie-Hellman.
      expect(d.handshakeShed + d.cookieSent + d.cookieShed + d.unknownPeer + d.handshakeInvalid).toBe(flood.length);
      expect(d.unknownPeer + d.handshakeInvalid).toBeLessThanOrEqual(1024);
      expect(d.cookieSent).toBeLessThanOrEqual(8); // one source: a burst of 4, then 2 a second
      expect(d.cookieShed).toBeGreaterThan(0);

      // A rekeys in the middle of the flood: its initiation comes from a known endpoint (its own lane),
      // gets a cookie (its own per-source budget), and the retransmission with mac2 completes.
      vi.setSystemTime(start + 121_000);
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
