import { describe, it, expect, beforeEach, vi } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { makeSide, deliver, sendFromTun, ipv4Packet, memoryBind, memoryTun, udpEndpoint, type Side } from './memory-link.js';

function pump(a: Side, b: Side): void {
  for (let i = 0; i < 20 && deliver(a, b) + deliver(b, a) > 0; i++);
}

describe('Device over an in-memory link', () => {
  let a: Side;
  let b: Side;
  const aKey = generatePrivateKey();
  const bKey = generatePrivateKey();
  const psk = generatePrivateKey();

  beforeEach(() => {
    const sides: Side[] = [];
    a = makeSide(aKey, [192, 0, 2, 1], 51820, () => [sides[1].inbox]);
    b = makeSide(bKey, [192, 0, 2, 2], 51821, () => [sides[0].inbox]);
    sides.push(a, b);
    a.device.addPeer({ publicKey: publicKeyOf(bKey), presharedKey: psk, endpoint: udpEndpoint(b), allowedIps: [parsePrefix('100.64.0.2/32')!] });
    b.device.addPeer({ publicKey: publicKeyOf(aKey), presharedKey: psk, allowedIps: [parsePrefix('100.64.0.1/32')!] });
  });

  it('handshakes on the first packet, delivers it, and carries traffic both ways', () => {
    sendFromTun(a, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('hello'))]);
    pump(a, b);
    expect(b.tunOut.length).toBe(1);
    expect(b.tunOut[0].subarray(28).toString()).toBe('hello');
    // B learned A's endpoint from the handshake and can answer.
    sendFromTun(b, [ipv4Packet([100, 64, 0, 2], [100, 64, 0, 1], Buffer.from('world'))]);
    pump(a, b);
    expect(a.tunOut.map((p) => p.subarray(28).toString())).toEqual(['world']);
    // One data packet each way, and B's keepalive-free answer: packet counts beside the bytes.
    const bOnA = a.device.allPeers()[0];
    expect(bOnA.rxPackets).toBe(1);
    expect(bOnA.txPackets).toBeGreaterThanOrEqual(1);
    expect(b.device.allPeers()[0].rxPackets).toBe(bOnA.txPackets);
  });

  it('drops replayed, garbage and spoofed-source packets and counts them', () => {
    sendFromTun(a, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('one'))]);
    pump(a, b);
    sendFromTun(a, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('two'))]);
    const captured = b.inbox.map((m) => Buffer.from(m));
    pump(a, b);
    b.inbox.push(...captured); // replay
    b.inbox.push(Buffer.from('garbage that is not wireguard'));
    const flipped = Buffer.from(captured[0]);
    flipped.writeUInt32LE(1000, 8); // a fresh counter, so it reaches authentication and fails there
    b.inbox.push(flipped);
    deliver(b, a);
    const peerOnB = b.device.allPeers()[0];
    expect(peerOnB.dropped.replay).toBe(1);
    expect(b.device.dropped.malformed).toBe(1);
    expect(peerOnB.dropped.decryptFailed).toBe(1);
    // A packet whose inner source is outside A's allowed IPs is dropped after decryption.
    sendFromTun(a, [ipv4Packet([100, 64, 0, 9], [100, 64, 0, 2], Buffer.from('spoof'))]);
    pump(a, b);
    expect(peerOnB.dropped.sourceNotAllowed).toBe(1);
    expect(b.tunOut.map((p) => p.subarray(28).toString())).toEqual(['one', 'two']);
  });

  it('completes a handshake through the cookie path when the responder is under load', async () => {
    const sides: Side[] = [];
    const c = makeSide(aKey, [192, 0, 2, 1], 51820, () => [sides[1].inbox]);
    const { Device } = await import('../../src/wireguard/device.js');
    const d = makeSide(bKey, [192, 0, 2, 2], 51821, () => [sides[0].inbox]);
    // Rebuild d's device so that it always demands cookies.
    (d as { device: InstanceType<typeof Device> }).device = new Device({
      privateKey: bKey, mtu: 1420, batchSize: 64, alwaysUnderLoad: true,
      bind: memoryBind(() => c.inbox), tun: memoryTun(() => d.tunOut),
    });
    sides.push(c, d);
    const peerOnC = c.device.addPeer({ publicKey: publicKeyOf(bKey), endpoint: udpEndpoint(d), allowedIps: [parsePrefix('100.64.0.2/32')!] });
    d.device.addPeer({ publicKey: publicKeyOf(aKey), allowedIps: [parsePrefix('100.64.0.1/32')!] });
    sendFromTun(c, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('x'))]);
    pump(c, d);
    expect(d.device.dropped.cookieSent).toBe(1);
    expect(d.tunOut.length).toBe(0);
    // The retransmission carries mac2 from the cookie and succeeds.
    c.device.tick(peerOnC.nextRetransmitAt + 1);
    pump(c, d);
    expect(d.tunOut.length).toBe(1);
  });

  it('recovers when both sides initiate at once and the crossing initiations overwrite each other', () => {
    // Both know each other's endpoint and both have a packet to send.
    b.device.getPeer(publicKeyOf(aKey))!.endpoint = udpEndpoint(a);
    sendFromTun(a, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('from-a'))]);
    sendFromTun(b, [ipv4Packet([100, 64, 0, 2], [100, 64, 0, 1], Buffer.from('from-b'))]);
    pump(a, b);
    // Whatever the crossing did, the retransmit timers (with their jitter) must finish the job.
    // The clock is simulated for the whole device (timers and receive path alike).
    const start = Date.now();
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      for (let t = 10; t <= 30_000 && !(b.tunOut.length && a.tunOut.length); t += 10) {
        vi.setSystemTime(start + t);
        a.device.tick(start + t);
        b.device.tick(start + t);
        pump(a, b);
      }
    } finally {
      vi.useRealTimers();
    }
    expect(b.tunOut.map((p) => p.subarray(28).toString())).toContain('from-a');
    expect(a.tunOut.map((p) => p.subarray(28).toString())).toContain('from-b');
  });

  it('ticks only peers whose timers can come due: idle peers rest, traffic and keepalives wake them', () => {
    // 1,000 configured peers that never send: after one tick none is looked at again.
    for (let i = 0; i < 1000; i++) a.device.addPeer({ publicKey: publicKeyOf(generatePrivateKey()), allowedIps: [] });
    const now = Date.now();
    a.device.tick(now);
    expect(a.device.timedPeers).toBe(0);
    // Traffic wakes the peer it goes to; its session keeps it ticking until the keys are erased.
    sendFromTun(a, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('wake'))]);
    pump(a, b);
    expect(b.tunOut).toHaveLength(1);
    a.device.tick(Date.now());
    expect(a.device.timedPeers).toBe(1);
    a.device.tick(Date.now() + 10 * 60_000); // past 3 x reject-after-time: sessions erased
    a.device.tick(Date.now() + 10 * 60_000 + 100);
    expect(a.device.timedPeers).toBe(0);
    // A persistent keepalive never rests, and still fires.
    const kept = a.device.addPeer({ publicKey: publicKeyOf(generatePrivateKey()), endpoint: udpEndpoint(b), persistentKeepalive: 25, allowedIps: [] });
    a.device.tick(Date.now());
    expect(a.device.timedPeers).toBe(1);
    const before = b.inbox.length;
    a.device.tick(Date.now() + 26_000);
    expect(b.inbox.length).toBeGreaterThan(before); // its keepalive (an initiation first: no session yet)
    expect(kept.lastInitiationSentAt).toBeGreaterThan(0);
  });

  it('follows a peer that changes its source on every packet, logging only a few of the moves', () => {
    const lines: { to: string; unloggedChanges: number }[] = [];
    const log = { info: (o: object, msg: string) => { if (msg === 'peer endpoint changed') lines.push(o as never); }, warn() {}, debug() {} };
    const sides: Side[] = [];
    const x = makeSide(aKey, [192, 0, 2, 1], 51820, () => [sides[1].inbox]);
    const y = makeSide(bKey, [192, 0, 2, 2], 51821, () => [sides[0].inbox], log);
    sides.push(x, y);
    x.device.addPeer({ publicKey: publicKeyOf(bKey), endpoint: udpEndpoint(y), allowedIps: [parsePrefix('100.64.0.2/32')!] });
    y.device.addPeer({ publicKey: publicKeyOf(aKey), allowedIps: [parsePrefix('100.64.0.1/32')!] });
    sendFromTun(x, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from('hello'))]);
    pump(x, y);
    for (let i = 0; i < 200; i++) {
      sendFromTun(x, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from(`m${i}`))]);
      x.endpoint = Buffer.from(x.endpoint);
      x.endpoint.writeUInt16BE(20000 + i, 16); // a new source port for each packet
      deliver(y, x);
    }
    console.log(`200 source changes: ${lines.length} log lines, endpoint now ${String(y.device.allPeers()[0].endpoint)}`);
    expect(y.tunOut).toHaveLength(201);
    expect(String(y.device.allPeers()[0].endpoint)).toBe('192.0.2.1:20199');
    expect(lines.length).toBeLessThanOrEqual(5);
  });
});
