import { afterEach, describe, expect, it } from 'vitest';
import { BirthdayProber, type ProbeReceive, type ProbeSocket } from '../../src/paths/birthday.js';
import { birthday as B } from '../../src/paths/constants.js';
import { DiscoCodec } from '../../src/paths/disco.js';
import { MagicSock, type UdpPort } from '../../src/paths/magicsock.js';
import type { RelayLink } from '../../src/paths/relay-links.js';
import { ENDPOINT_SIZE, endpointPort, formatEndpoint, makeEndpoint } from '../../src/net/endpoint.js';
import { DISCO_MAGIC } from '../../src/paths/disco.js';
import { Device } from '../../src/wireguard/device.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { ipv4Packet, memoryTun, sendFromTun, type Side } from '../wireguard/memory-link.js';

const silent = { info() {}, warn() {}, debug() {} };
const ip = (...b: number[]) => Uint8Array.from(b);

/** Fake probe sockets: each records what it sent and whether it was closed. */
function fakeFactory(limit = Infinity) {
  const opened: { sent: Buffer[]; closed: boolean; sock: ProbeSocket }[] = [];
  return {
    opened,
    open(): ProbeSocket | null {
      if (opened.length >= limit) return null;
      const rec = { sent: [] as Buffer[], closed: false, sock: null as unknown as ProbeSocket };
      rec.sock = { send: () => 1, close: () => void (rec.closed = true) };
      opened.push(rec);
      return rec.sock;
    },
  };
}

function prober() {
  let now = 1_000_000;
  const pings: { peer: object; to: string; via: ProbeSocket | null }[] = [];
  const p = new BirthdayProber<object>({ ping: (peer, to, via) => pings.push({ peer, to: formatEndpoint(to), via }), receive: () => {} }, () => now);
  const factory = fakeFactory();
  p.setSocketFactory(factory);
  const advance = (ms: number, step = 250) => {
    for (let t = 0; t < ms; t += step) {
      now += step;
      p.tick();
    }
  };
  return { p, pings, factory, advance, at: () => now };
}

describe('birthday prober: budgets and bounds', () => {
  it('hard side: 256 sockets, one ping from each per round, two rounds, all to the one target; gives up at 15 s and closes them', () => {
    const { p, pings, factory, advance } = prober();
    const peer = {};
    const target = makeEndpoint(ip(203, 0, 113, 20), 51820);
    expect(p.startHard(peer, target)).toBe(true);
    expect(factory.opened).toHaveLength(B.sockets);
    p.tick();
    expect(pings).toHaveLength(B.sockets); // the first round goes in one burst
    expect(new Set(pings.map((x) => x.via)).size).toBe(B.sockets);
    advance(B.attemptMs - 500);
    console.log(`hard attempt: ${pings.length} probes from ${factory.opened.length} sockets, targets ${[...new Set(pings.map((x) => x.to))].join(',')}`);
    expect(pings).toHaveLength(B.sockets * B.hardRounds);
    expect(pings.every((x) => x.to === '203.0.113.20:51820')).toBe(true);
    expect(factory.opened.every((s) => !s.closed)).toBe(true);
    advance(1000);
    expect(factory.opened.every((s) => s.closed)).toBe(true);
    expect(p.stats).toMatchObject({ attempts: 1, givenUp: 1, socketsOpen: 0 });
  });

  it('easy side: random ports of the one address, <= 100/s after the burst, <= 1,024 per attempt, then back-off', () => {
    const { p, pings, advance } = prober();
    const peer = {};
    expect(p.startEasy(peer, makeEndpoint(ip(203, 0, 113, 30), 4444))).toBe(true);
    advance(B.easyDelayMs + 250);
    const burst = pings.length;
    advance(2000);
    const rate = (pings.length - burst) / 2;
    advance(B.attemptMs);
    const ports = new Set(pings.map((x) => endpointPort(makeEndpointFrom(x.to))));
    console.log(`easy attempt: burst ${burst}, then ${rate} probes/s, ${pings.length} probes in all over ${ports.size} distinct ports`);
    expect(burst).toBeLessThanOrEqual(B.probeBurst + B.probesPerSecond / 4 + 1); // plus one tick's refill
    expect(rate).toBeLessThanOrEqual(B.probesPerSecond * 1.1);
    expect(pings.length).toBe(B.maxProbesPerAttempt);
    expect(pings.every((x) => x.to.startsWith('203.0.113.30:') && x.via === null)).toBe(true);
    expect(ports.size).toBeGreaterThan(900);
    expect(p.stats.givenUp).toBe(1);
    // Back-off: the same peer may not start again at once, however often it asks.
    for (let i = 0; i < 100; i++) p.startEasy(peer, makeEndpoint(ip(203, 0, 113, 30), 4444));
    advance(5000);
    expect(pings.length).toBe(B.maxProbesPerAttempt);
    expect(p.stats.refused).toBe(100);
    advance(B.backoffFirstMs * 2);
    expect(p.startEasy(peer, makeEndpoint(ip(203, 0, 113, 30), 4444))).toBe(true);
  });

  it('one budget for all: 4 easy attempts at once send no more than 100/s together; a fifth is refused', () => {
    const { p, pings, advance } = prober();
    const peers = [{}, {}, {}, {}, {}];
    const started = peers.map((peer, i) => p.startEasy(peer, makeEndpoint(ip(203, 0, 113, 40 + i), 1)));
    expect(started).toEqual([true, true, true, true, false]);
    advance(5000);
    console.log(`4 easy attempts, 5 s: ${pings.length} probes (budget: ${B.probeBurst} + 5 x ${B.probesPerSecond})`);
    expect(pings.length).toBeLessThanOrEqual(B.probeBurst + 5 * B.probesPerSecond + 1);
    expect(p.stats.probesDeferred).toBeGreaterThan(0);
  });

  it('success through one socket keeps it and closes the other 255; through the main socket closes all', () => {
    const { p, factory } = prober();
    const a = {};
    p.startHard(a, makeEndpoint(ip(203, 0, 113, 20), 51820));
    p.tick();
    const winner = factory.opened[17].sock;
    p.succeeded(a, winner);
    expect(factory.opened.filter((s) => s.closed)).toHaveLength(B.sockets - 1);
    expect(factory.opened[17].closed).toBe(false);
    expect(p.owns(a, winner)).toBe(true);
    expect(p.stats).toMatchObject({ successes: 1, socketsOpen: 1 });
    p.release(a);
    expect(factory.opened[17].closed).toBe(true);
    expect(p.stats.socketsOpen).toBe(0);
    // A path that moves on to the main socket (another address of the peer, found through it)
    // closes the kept socket.
    const b = {};
    const again = fakeFactory();
    p.setSocketFactory(again);
    p.startHard(b, makeEndpoint(ip(203, 0, 113, 21), 51820));
    p.succeeded(b, again.opened[5].sock);
    expect(p.stats.socketsOpen).toBe(1);
    p.succeeded(b, null);
    expect(again.opened.every((s) => s.closed)).toBe(true);
    expect(p.stats.socketsOpen).toBe(0);
  });

  it('one hard attempt at a time, another once it found its path (a kept socket does not block the next), and none without sockets', () => {
    const { p, factory } = prober();
    const first = {};
    expect(p.startHard(first, makeEndpoint(ip(203, 0, 113, 20), 1))).toBe(true);
    expect(p.startHard({}, makeEndpoint(ip(203, 0, 113, 21), 1))).toBe(false);
    p.succeeded(first, factory.opened[3].sock);
    expect(p.startHard({}, makeEndpoint(ip(203, 0, 113, 21), 1))).toBe(true);
    expect(p.stats.socketsOpen).toBe(1 + B.sockets);
    const q = new BirthdayProber<object>({ ping: () => {}, receive: () => {} });
    q.setSocketFactory(fakeFactory(10)); // the fd limit leaves too few
    expect(q.startHard({}, makeEndpoint(ip(203, 0, 113, 20), 1))).toBe(false);
    expect(q.stats.socketsOpen).toBe(0);
  });
});

function makeEndpointFrom(text: string): Buffer {
  const [a, port] = text.split(':');
  return makeEndpoint(Uint8Array.from(a.split('.').map(Number)), Number(port));
}

/**
 * Two agents behind simulated NATs, with a relay between them: E behind a port-restricted NAT
 * (endpoint-independent mapping that keeps the port, filtering by address and port), H behind a
 * symmetric one (a random public port per source port and destination, filtering likewise). The
 * symmetric NAT picks the extra sockets' ports in [B.minPort, 65536), where the easy side probes.
 */
function natWorld(opts: { easyIsHard?: boolean; extraCandidates?: Buffer[] } = {}) {
  const keys = [generatePrivateKey(), generatePrivateKey()]; // 0 = E, 1 = H
  const ePub = makeEndpoint(ip(203, 0, 113, 20), 51820);
  const hPubIp = ip(203, 0, 113, 30);
  const hPublished = makeEndpoint(hPubIp, 7000); // what H's STUN saw (useless to E: another destination)
  const eFilter = new Set<string>(); // remote endpoints E sent to
  const hMap = new Map<string, number>(); // `${localPort}|${dst}` -> public port
  const hInbound = new Map<number, { localPort: number; remote: string }>();
  const hSockets = new Map<number, { sock: ProbeSocket; receive: ProbeReceive }>();
  const stats = { hitsAtH: 0, droppedAtH: 0, droppedAtE: 0, relayAsked: 0 };
  const socks: MagicSock[] = [];
  const devices: Device[] = [];
  const tunOut: Buffer[][] = [[], []];
  const relayEp = makeEndpoint(ip(203, 0, 113, 2), 7443);
  const later = (f: () => void) => setImmediate(f);
  const one = (msg: Buffer, from: Buffer) => [msg, msg.length, Int32Array.of(msg.length), from, 1] as const;

  const fromE = (msg: Buffer, to: Buffer) => {
    eFilter.add(formatEndpoint(to));
    const port = endpointPort(to);
    const entry = to.subarray(12, 16).equals(Buffer.from(hPubIp)) ? hInbound.get(port) : undefined;
    if (!entry || entry.remote !== formatEndpoint(ePub)) return void stats.droppedAtH++;
    stats.hitsAtH++;
    later(() => {
      if (entry.localPort === 51820) socks[1].receive(...one(msg, ePub));
      else {
        const s = hSockets.get(entry.localPort);
        s?.receive(s.sock, msg, msg.length, Int32Array.of(msg.length), Buffer.from(ePub), 1);
      }
    });
  };
  const fromH = (localPort: number, msg: Buffer, to: Buffer) => {
    const key = `${localPort}|${formatEndpoint(to)}`;
    let pub = hMap.get(key);
    if (pub === undefined) {
      // The main socket's mappings fall below the probed range, so the path found is always an
      // extra socket's (a real NAT can put it among the probed ports: then the main socket may
      // win, hard-nat.test.ts allows for it).
      const [lo, hi] = localPort === 51820 && B.minPort > 1024 ? [1024, B.minPort] : [B.minPort, 65536];
      do pub = lo + Math.floor(Math.random() * (hi - lo)); while (hInbound.has(pub));
      hMap.set(key, pub);
      hInbound.set(pub, { localPort, remote: formatEndpoint(to) });
    }
    const src = makeEndpoint(hPubIp, pub);
    if (formatEndpoint(to) !== formatEndpoint(ePub) || !eFilter.has(formatEndpoint(src))) return void stats.droppedAtE++;
    later(() => socks[0].receive(...one(msg, src)));
  };

  for (const i of [0, 1]) {
    const other = 1 - i;
    const udp: UdpPort = {
      send(slab, offsets, lens, addrs, count) {
        for (let k = 0; k < count; k++) {
          const to = Buffer.from(addrs.subarray(k * ENDPOINT_SIZE, (k + 1) * ENDPOINT_SIZE));
          const msg = Buffer.from(slab.subarray(offsets[k], offsets[k] + lens[k]));
          if (i === 0) fromE(msg, to);
          else fromH(51820, msg, to);
        }
        return count;
      },
    };
    // The relay sees each agent's session come from its NAT's public address (port not told).
    const seenAt = [makeEndpoint(ip(203, 0, 113, 20), 0), makeEndpoint(hPubIp, 0)];
    const relay: RelayLink = {
      endpoint: relayEp, name: 'relay', state: 'tcp', handleDatagram: () => false,
      confirmsPeerAddress: async (wgKey, claimed) => {
        stats.relayAsked++;
        await new Promise((r) => setTimeout(r, 2)); // a round trip to the relay
        const seen = seenAt[keys.findIndex((k) => Buffer.from(publicKeyOf(k)).equals(Buffer.from(wgKey)))];
        return seen !== undefined && seen.subarray(0, 16).equals(Buffer.from(claimed).subarray(0, 16));
      },
      send(_dst, packet) {
        const copy = Buffer.from(packet);
        later(() => socks[other].onRelayedPacket(Buffer.from(publicKeyOf(keys[i])), copy));
        return true;
      },
    };
    const sock = new MagicSock(udp, silent);
    const device = new Device({ privateKey: keys[i], mtu: 1420, batchSize: 8, bind: sock, tun: memoryTun(() => tunOut[i]) });
    sock.attach(device);
    sock.enablePaths(new DiscoCodec(keys[i], publicKeyOf(keys[i])), relay);
    socks.push(sock);
    devices.push(device);
  }
  socks[0].setNat(opts.easyIsHard ? true : false, ePub);
  socks[1].setNat(true, hPublished);
  let nextPort = 40000;
  socks[1].setProbeSockets({
    open(receive) {
      const localPort = nextPort++;
      const sock: ProbeSocket = {
        send(slab, offsets, lens, addrs, count) {
          for (let k = 0; k < count; k++) fromH(localPort, Buffer.from(slab.subarray(offsets[k], offsets[k] + lens[k])), Buffer.from(addrs.subarray(k * 20, k * 20 + 20)));
          return count;
        },
        close: () => void hSockets.delete(localPort),
      };
      hSockets.set(localPort, { sock, receive });
      return sock;
    },
  });
  const wg = keys.map((k) => Buffer.from(publicKeyOf(k)));
  const eEndpoint = socks[0].upsertPeer(wg[1], [hPublished, ...(opts.extraCandidates ?? [])]);
  devices[0].addPeer({ publicKey: wg[1], endpoint: eEndpoint, allowedIps: [parsePrefix('100.64.0.2/32')!] });
  const hEndpoint = socks[1].upsertPeer(wg[0], [ePub]);
  devices[1].addPeer({ publicKey: wg[0], endpoint: hEndpoint, allowedIps: [parsePrefix('100.64.0.1/32')!] });
  // E talks first (simultaneous first handshakes would cross), H answers once it has a session.
  const traffic = (tag: string, both = true) => {
    sendFromTun({ device: devices[0] } as Side, [ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from(`${tag}-e`))]);
    if (both) sendFromTun({ device: devices[1] } as Side, [ipv4Packet([100, 64, 0, 2], [100, 64, 0, 1], Buffer.from(`${tag}-h`))]);
  };
  return { socks, devices, keys, wg, stats, hSockets, tunOut, traffic, stop: () => socks.forEach((s) => s.stop()) };
}

const saved = { ...B };
afterEach(() => Object.assign(B, saved));

describe('birthday probing between simulated NATs', () => {
  it('port-restricted <-> symmetric: relayed, then direct through one extra socket; WireGuard flows both ways on it', async () => {
    // Fewer ports to hit (the NAT's range and the probes' shrink together) and a shorter wait: the test takes ~2 s.
    Object.assign(B, { minPort: 60_000, startAfterMs: 500 });
    const w = natWorld();
    try {
      const started = Date.now();
      let direct = false;
      while (!direct && Date.now() - started < 10_000) {
        w.traffic('t', Date.now() - started > 300);
        await new Promise((r) => setTimeout(r, 100));
        direct = w.socks[0].pathOf(w.wg[1])?.kind === 'direct' && w.socks[1].pathOf(w.wg[0])?.kind === 'direct';
      }
      const took = Date.now() - started;
      const e = w.socks[0].birthdayStats();
      const h = w.socks[1].birthdayStats();
      console.log(`direct after ${took} ms; easy side ${JSON.stringify(e)}; hard side ${JSON.stringify(h)}; NAT ${JSON.stringify(w.stats)}; H sockets left ${w.hSockets.size}`);
      expect(direct).toBe(true);
      expect(w.hSockets.size).toBe(1); // the one the path uses
      expect(h.birthdaySockets).toBe(1);
      expect(e.birthdayProbes).toBeLessThanOrEqual(B.maxProbesPerAttempt);
      // Traffic now goes direct through that socket, both ways (the relay carries none of it).
      const relayedBefore = [w.socks[0].stats.relayedIn, w.socks[1].stats.relayedIn];
      const before = [w.tunOut[0].length, w.tunOut[1].length];
      for (let i = 0; i < 5; i++) {
        w.traffic(`d${i}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 100));
      console.log(`H dropped ${JSON.stringify(w.devices[1].dropped)} H peer rx ${w.devices[1].allPeers()[0].rxPackets} E peer tx ${w.devices[0].allPeers()[0].txPackets} E path ${JSON.stringify(w.socks[0].pathOf(w.wg[1]))} H path ${JSON.stringify(w.socks[1].pathOf(w.wg[0]))} NAT ${JSON.stringify(w.stats)}`);
      console.log(`direct: ${w.tunOut[1].length - before[1]} packets E -> H, ${w.tunOut[0].length - before[0]} H -> E; relayed in ${relayedBefore} -> ${[w.socks[0].stats.relayedIn, w.socks[1].stats.relayedIn]}`);
      expect(w.tunOut[1].length - before[1]).toBe(5);
      expect(w.tunOut[0].length - before[0]).toBe(5);
      expect([w.socks[0].stats.relayedIn, w.socks[1].stats.relayedIn]).toEqual(relayedBefore);
    } finally {
      w.stop();
    }
  }, 15_000);

  it('symmetric <-> symmetric: the hard side asks, the other refuses (its mapping varies too); no sockets, no probes, relay kept', async () => {
    Object.assign(B, { startAfterMs: 300 });
    const w = natWorld({ easyIsHard: true });
    try {
      for (let i = 0; i < 15; i++) {
        w.traffic('t', i > 3);
        await new Promise((r) => setTimeout(r, 100));
      }
      const h = w.socks[1].birthdayStats();
      console.log(`symmetric <-> symmetric: hard side ${JSON.stringify(h)}, other side ${JSON.stringify(w.socks[0].birthdayStats())}`);
      expect(h.birthdayAttempts).toBe(0);
      expect(w.hSockets.size).toBe(0);
      expect(w.socks[1].pathOf(w.wg[0])?.kind).toBe('relay');
    } finally {
      w.stop();
    }
  });
});

describe('birthday probing: what a member can make us do', () => {
  /** E (the easy side) gets messages sealed by H's key through the relay, as a malicious member would send them. */
  const asH = (w: ReturnType<typeof natWorld>) => new DiscoCodec(w.keys[1], publicKeyOf(w.keys[1]));
  const relayToE = (w: ReturnType<typeof natWorld>, msg: Buffer) => w.socks[0].onRelayedPacket(w.wg[1], msg);
  const active = async (w: ReturnType<typeof natWorld>) => {
    w.traffic('t', false); // E has traffic for H: E wants a path
    await new Promise((r) => setTimeout(r, 50));
  };

  it('a request naming an address the member is not known at sprays nothing', async () => {
    const w = natWorld();
    try {
      await active(w);
      const victim = makeEndpoint(ip(203, 0, 113, 99), 53);
      for (let i = 0; i < 20; i++) relayToE(w, asH(w).seal(publicKeyOf(w.keys[0]), { type: 'birthday', answer: false, publicEndpoint: victim })!);
      await new Promise((r) => setTimeout(r, 1500));
      const e = w.socks[0].birthdayStats();
      console.log(`20 requests for ${formatEndpoint(victim)}: ${e.birthdayProbes} probes sent, ${e.birthdayRefused} refused`);
      expect(e.birthdayProbes).toBe(0);
      expect(e.birthdayAttempts).toBe(0);
      expect(e.birthdayRefused).toBe(20);
      expect(w.stats.relayAsked).toBe(1); // a refused request backs the member off: one relay query, not 20
    } finally {
      w.stop();
    }
  });

  it('1,000 requests for its own address: one attempt, at most 1,024 probes, at most 100/s after the burst, all to that address', async () => {
    const w = natWorld();
    const sent: string[] = [];
    try {
      await active(w);
      const spy = w.socks[0] as unknown as { udp: UdpPort };
      const real = spy.udp.send.bind(spy.udp);
      spy.udp.send = (slab, offsets, lens, addrs, count) => {
        for (let k = 0; k < count; k++) if (slab[offsets[k]] === DISCO_MAGIC) sent.push(formatEndpoint(addrs, k * ENDPOINT_SIZE));
        return real(slab, offsets, lens, addrs, count);
      };
      const own = makeEndpoint(ip(203, 0, 113, 30), 7000);
      for (let i = 0; i < 1000; i++) relayToE(w, asH(w).seal(publicKeyOf(w.keys[0]), { type: 'birthday', answer: false, publicEndpoint: own })!);
      await new Promise((r) => setTimeout(r, 3000));
      const e = w.socks[0].birthdayStats();
      console.log(`1,000 requests: ${e.birthdayAttempts} attempt, ${e.birthdayProbes} probes in 3 s (${sent.length} disco datagrams), ${e.birthdayRefused} refused, shed by disco budgets ${w.socks[0].stats.discoShed}`);
      expect(e.birthdayAttempts).toBe(1);
      expect(e.birthdayProbes).toBeLessThanOrEqual(B.probeBurst + 3 * B.probesPerSecond + 25);
      expect(sent.every((x) => x.startsWith('203.0.113.30:'))).toBe(true);
    } finally {
      w.stop();
    }
  });

  it('disco on an extra socket that does not probe for its sender is refused before it is opened', async () => {
    const w = natWorld();
    try {
      const stranger: ProbeSocket = { send: () => 1, close: () => {} };
      const asE = new DiscoCodec(w.keys[0], publicKeyOf(w.keys[0]));
      const ping = asE.seal(publicKeyOf(w.keys[1]), { type: 'ping', txid: Buffer.alloc(12, 7) })!;
      const h = w.socks[1] as unknown as { receiveVia: (s: ProbeSocket, slab: Buffer, slot: number, lens: Int32Array, addrs: Buffer, n: number) => void };
      const before = { ...w.socks[1].stats };
      h.receiveVia(stranger, ping, ping.length, Int32Array.of(ping.length), makeEndpoint(ip(203, 0, 113, 20), 51820), 1);
      console.log(`ping from E on a socket that is not E's: rejected ${w.socks[1].stats.discoRejected - before.discoRejected}, opened ${w.socks[1].stats.discoIn - before.discoIn}`);
      expect(w.socks[1].stats.discoRejected - before.discoRejected).toBe(1);
      expect(w.socks[1].stats.discoIn).toBe(before.discoIn);
    } finally {
      w.stop();
    }
  });

  it('an answer we did not ask for opens no sockets', async () => {
    const w = natWorld();
    try {
      w.traffic('t', false);
      await new Promise((r) => setTimeout(r, 50));
      // To H (the hard side), before it asked anything: an "answer" naming E's own published endpoint.
      const asE = new DiscoCodec(w.keys[0], publicKeyOf(w.keys[0]));
      w.socks[1].onRelayedPacket(w.wg[0], asE.seal(publicKeyOf(w.keys[1]), { type: 'birthday', answer: true, publicEndpoint: makeEndpoint(ip(203, 0, 113, 20), 51820) })!);
      await new Promise((r) => setTimeout(r, 100));
      const h = w.socks[1].birthdayStats();
      console.log(`unsolicited answer: ${h.birthdaySockets} sockets, ${h.birthdayRefused} refused`);
      expect(h.birthdaySockets).toBe(0);
      expect(w.hSockets.size).toBe(0);
      expect(h.birthdayRefused).toBe(1);
    } finally {
      w.stop();
    }
  });
});

describe('birthday probing: a victim address in the record or a call-me-maybe', () => {
  const victim = makeEndpoint(ip(203, 0, 113, 99), 53);
  const asH = (w: ReturnType<typeof natWorld>) => new DiscoCodec(w.keys[1], publicKeyOf(w.keys[1]));
  const relayToE = (w: ReturnType<typeof natWorld>, msg: Buffer) => w.socks[0].onRelayedPacket(w.wg[1], msg);
  /** Counts E's disco datagrams to the victim's IP on ports other than the one published (the birthday probes). */
  const spyOnE = (w: ReturnType<typeof natWorld>) => {
    const seen = { toVictimOtherPorts: 0, toVictimPublished: 0, toHOwn: 0 };
    const spy = w.socks[0] as unknown as { udp: UdpPort };
    const real = spy.udp.send.bind(spy.udp);
    spy.udp.send = (slab, offsets, lens, addrs, count) => {
      for (let k = 0; k < count; k++) {
        if (slab[offsets[k]] !== DISCO_MAGIC) continue;
        const to = formatEndpoint(addrs, k * ENDPOINT_SIZE);
        if (to === '203.0.113.99:53') seen.toVictimPublished++;
        else if (to.startsWith('203.0.113.99:')) seen.toVictimOtherPorts++;
        else if (to.startsWith('203.0.113.30:')) seen.toHOwn++;
      }
      return real(slab, offsets, lens, addrs, count);
    };
    return seen;
  };
  const requests = async (w: ReturnType<typeof natWorld>, n: number) => {
    w.traffic('t', false); // E has traffic for H: E wants a path
    await new Promise((r) => setTimeout(r, 50));
    for (let i = 0; i < n; i++) {
      relayToE(w, asH(w).seal(publicKeyOf(w.keys[0]), { type: 'birthday', answer: false, publicEndpoint: victim })!);
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 1500));
  };

  it('a record naming a victim IP, and requests naming it: 0 probes to the victim (its relay sees the member elsewhere)', async () => {
    const w = natWorld({ extraCandidates: [victim] });
    try {
      const seen = spyOnE(w);
      await requests(w, 20);
      const e = w.socks[0].birthdayStats();
      console.log(`record names ${formatEndpoint(victim)}, 20 requests for it: ${seen.toVictimOtherPorts} probes to other ports of the victim (disco pings of the published candidate: ${seen.toVictimPublished}), birthday ${JSON.stringify(e)}, relay asked ${w.stats.relayAsked}`);
      expect(seen.toVictimOtherPorts).toBe(0);
      expect(e.birthdayProbes).toBe(0);
      expect(e.birthdayAttempts).toBe(0);
      expect(e.birthdayRefused).toBe(20);
      expect(w.stats.relayAsked).toBe(1); // a refused request backs the member off: one relay query, not 20
    } finally {
      w.stop();
    }
  });

  it('a call-me-maybe naming a victim IP, then requests naming it: 0 probes to the victim', async () => {
    const w = natWorld();
    try {
      const seen = spyOnE(w);
      w.traffic('t', false);
      await new Promise((r) => setTimeout(r, 1100)); // H's own call-me-maybe (on that traffic) was taken; the next is heard a second later
      relayToE(w, asH(w).seal(publicKeyOf(w.keys[0]), { type: 'call-me-maybe', candidates: [victim] })!);
      await requests(w, 20);
      const e = w.socks[0].birthdayStats();
      console.log(`call-me-maybe names ${formatEndpoint(victim)}, 20 requests for it: ${seen.toVictimOtherPorts} probes to other ports of the victim (pings of the candidate: ${seen.toVictimPublished}), birthday ${JSON.stringify(e)}`);
      expect(seen.toVictimOtherPorts).toBe(0);
      expect(e.birthdayProbes).toBe(0);
    } finally {
      w.stop();
    }
  });

  it('without the relay\'s word on the address (an older relay, or the peer not on it), no probing at all, even of the member\'s own address', async () => {
    const w = natWorld();
    try {
      const link = (w.socks[0] as unknown as { relays: { linkFor(): RelayLink } }).relays.linkFor();
      link.confirmsPeerAddress = undefined;
      const seen = spyOnE(w);
      w.traffic('t', false);
      await new Promise((r) => setTimeout(r, 50));
      for (let i = 0; i < 5; i++) relayToE(w, asH(w).seal(publicKeyOf(w.keys[0]), { type: 'birthday', answer: false, publicEndpoint: makeEndpoint(ip(203, 0, 113, 30), 7000) })!);
      await new Promise((r) => setTimeout(r, 500));
      const e = w.socks[0].birthdayStats();
      console.log(`no peer address from the relay: ${e.birthdayProbes} probes, ${seen.toHOwn} disco datagrams to the member's address, ${e.birthdayRefused} refused`);
      expect(e.birthdayProbes).toBe(0);
      expect(e.birthdayRefused).toBe(5);
    } finally {
      w.stop();
    }
  });
});
