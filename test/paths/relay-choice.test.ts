import { describe, expect, it } from 'vitest';
import { relayChoice as C } from '../../src/paths/constants.js';
import { DiscoCodec } from '../../src/paths/disco.js';
import { MagicSock, type UdpPort } from '../../src/paths/magicsock.js';
import { PeerPath } from '../../src/paths/peer-path.js';
import { HomeChoice, RelayHealth, chooseHome, smoothRtt, type RelayMeasure } from '../../src/paths/relay-choice.js';
import { RelayLinks, type ManagedLink } from '../../src/paths/relay-links.js';
import { RelayProber } from '../../src/paths/relay-probe.js';
import { ENDPOINT_SIZE, formatEndpoint, makeEndpoint, sameEndpoint } from '../../src/net/endpoint.js';
import { answerBindingRequest, buildBindingRequest, newTransactionId } from '../../src/net/stun.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';

const NOW = 1_000_000;
const m = (name: string, rttMs: number | null, agoMs = 0): RelayMeasure => ({ name, rttMs, lastAnswerAt: rttMs === null ? -Infinity : NOW - agoMs });

describe('home relay choice', () => {
  it('takes the nearest relay that answers', () => {
    expect(chooseHome([m('eu', 40), m('us', 12), m('ap', 90)], null, NOW)).toBe('us');
    expect(chooseHome([m('eu', 40), m('us', null)], null, NOW)).toBe('eu');
  });

  it('keeps the current home unless another is clearly nearer (hysteresis)', () => {
    // 30 vs 25 ms: 17 % and 5 ms faster, not enough; 30 vs 15 ms: both margins met.
    expect(chooseHome([m('eu', 30), m('us', 25)], 'eu', NOW)).toBe('eu');
    expect(chooseHome([m('eu', 30), m('us', 15)], 'eu', NOW)).toBe('us');
    // Sub-millisecond relays (one LAN): half the RTT is still under the absolute margin.
    expect(chooseHome([m('a', 0.8), m('b', 0.3)], 'a', NOW)).toBe('a');
  });

  it('does not flap on noisy RTT samples', () => {
    let a: number | null = null;
    let b: number | null = null;
    let home: string | null = null;
    let moves = 0;
    for (let i = 0; i < 1000; i++) {
      // Two relays at ~20 ms, each sample off by up to +-8 ms.
      a = smoothRtt(a, 20 + Math.sin(i * 1.3) * 8);
      b = smoothRtt(b, 20 + Math.cos(i * 0.7) * 8);
      const next = chooseHome([m('a', a), m('b', b)], home, NOW);
      if (home !== null && next !== home) moves++;
      home = next;
    }
    console.log(`moves between two ~20 ms relays over 1000 noisy rounds: ${moves}`);
    expect(moves).toBe(0);
  });

  it('moves to a clearly nearer relay only once it has stayed so for switchAfterMs; leaves a dead home at once', () => {
    const choice = new HomeChoice();
    let home = choice.next([m('a', 5), m('b', 6)], null, NOW);
    expect(home).toBe('a');
    // a's process is busy for 5 s (60 ms), then fine again: no move.
    for (let t = 0; t <= 5_000; t += 250) home = choice.next([m('a', 60, 0), m('b', 6)].map((x) => ({ ...x, lastAnswerAt: NOW + t })), home, NOW + t);
    home = choice.next([m('a', 5), m('b', 6)].map((x) => ({ ...x, lastAnswerAt: NOW + 5_250 })), home, NOW + 5_250);
    expect(home).toBe('a');
    // Slow for good: the move comes after switchAfterMs.
    let movedAt = -1;
    for (let t = 6_000; t <= 30_000 && movedAt < 0; t += 250) {
      home = choice.next([m('a', 60), m('b', 6)].map((x) => ({ ...x, lastAnswerAt: NOW + t })), home, NOW + t);
      if (home === 'b') movedAt = t - 6_000;
    }
    console.log(`home moved to the clearly nearer relay after ${movedAt} ms of it being nearer`);
    expect(movedAt).toBeGreaterThanOrEqual(C.switchAfterMs);
    expect(movedAt).toBeLessThan(C.switchAfterMs + 1_000);
    // b dies: away at once.
    const now = NOW + 60_000;
    expect(choice.next([m('a', 60, 0), m('b', 6, C.deadAfterMs + 1)].map((x) => ({ ...x, lastAnswerAt: now - (x.name === 'b' ? C.deadAfterMs + 1 : 0) })), 'b', now)).toBe('a');
  });

  it('leaves a home that stopped answering for the nearest live one', () => {
    const dead = C.deadAfterMs + 1;
    expect(chooseHome([m('eu', 5, dead), m('us', 80), m('ap', 60)], 'eu', NOW)).toBe('ap');
    // Another relay is probed less often: last heard between two of its probes, it is live.
    expect(chooseHome([m('eu', 5, dead), m('us', 80, C.otherProbeMs + 500)], 'eu', NOW)).toBe('us');
    // Silent for less than deadAfterMs: still home.
    expect(chooseHome([m('eu', 5, C.deadAfterMs - 500), m('us', 80)], 'eu', NOW)).toBe('eu');
    // Nobody answers: keep what we have (or take the first listed), so there is always a guess.
    expect(chooseHome([m('eu', 5, dead), m('us', 9, dead + C.otherProbeMs)], 'eu', NOW)).toBe('eu');
    expect(chooseHome([m('eu', null), m('us', null)], null, NOW)).toBe('eu');
    expect(chooseHome([], null, NOW)).toBe(null);
  });
});

describe('relays that refuse us', () => {
  it('a relay that refuses every hello is left and not chosen again at each retry; one refused hello costs nothing', () => {
    // "near" answers STUN at 2 ms but refuses our hellos: its link is down between retries
    // (backoff 1, 2, 4, ... s), connecting for a moment at each. "far" works, at 40 ms.
    const health = new RelayHealth();
    let home: string | null = 'near';
    const homes: string[] = [];
    for (let t = 0; t < 10 * 60_000; t += 250) {
      const now = NOW + t;
      const retryAt = [1, 3, 7, 15, 31, 61].map((s) => s * 1000).concat(Array.from({ length: 20 }, (_, i) => 91_000 + i * 30_000));
      const connecting = retryAt.some((r) => t >= r && t < r + 250);
      health.observe('near', !connecting, now);
      health.observe('far', false, now);
      const next = chooseHome(health.adjust([m('near', 2, 0), m('far', 40, 0)].map((x) => ({ ...x, lastAnswerAt: now })), home, now), home, now);
      if (next !== home) homes.push(next!);
      home = next;
    }
    console.log(`10 minutes beside a near relay that refuses us: home moves ${homes.join(' -> ') || 'none'}`);
    expect(homes[0]).toBe('far');
    expect(homes.length).toBeLessThanOrEqual(3); // at most one return per avoidance period (5 min)

    // A relay that refuses one hello (it had not seen us join yet) and takes the next: never avoided.
    const fresh = new RelayHealth();
    fresh.observe('r', true, NOW);
    fresh.observe('r', false, NOW + 1_000);
    expect(fresh.adjust([m('r', 2), m('s', 40)], 'r', NOW + 1_000)[0].lastAnswerAt).toBe(NOW);
  });

  it('an avoided relay is still used when no other one answers', () => {
    const health = new RelayHealth();
    health.observe('a', true, NOW - C.downGraceMs);
    health.observe('a', false, NOW);
    const [a] = health.adjust([m('a', 5), m('b', 9, C.deadAfterMs + C.otherProbeMs + 1)], 'b', NOW);
    expect(a.lastAnswerAt).toBe(NOW);
    expect(chooseHome(health.adjust([m('a', 5), m('b', 9)], 'b', NOW), 'b', NOW)).toBe('b');
  });
});

describe('relay prober', () => {
  const relayA = makeEndpoint(Uint8Array.of(203, 0, 113, 21), 7443);
  const relayB = makeEndpoint(Uint8Array.of(203, 0, 113, 22), 7443);
  const self = makeEndpoint(Uint8Array.of(192, 0, 2, 2), 51820);

  it('measures each relay from its own answers, probing the home one more often', () => {
    const sent: { buf: Buffer; to: Buffer }[] = [];
    const prober = new RelayProber([{ name: 'a', endpoint: relayA }, { name: 'b', endpoint: relayB }], (buf, to) => sent.push({ buf, to }));
    prober.tick(NOW, 'a');
    expect(sent.map((s) => formatEndpoint(s.to))).toEqual(['203.0.113.21:7443', '203.0.113.22:7443']);
    prober.tick(NOW + C.homeProbeMs, 'a');
    expect(sent.length).toBe(3); // only the home relay again
    // b's answer, sent from a's address (spoofed or misrouted), does not count for either.
    const answerB = answerBindingRequest(sent[1].buf, 0, sent[1].buf.length, self, 0)!;
    expect(prober.onResponse(answerB, 0, answerB.length, relayA, 0)).toBe(false);
    expect(prober.onResponse(answerB, 0, answerB.length, relayB, 0)).toBe(true);
    expect(prober.onResponse(answerB, 0, answerB.length, relayB, 0)).toBe(false); // used up
    const answerA = answerBindingRequest(sent[2].buf, 0, sent[2].buf.length, self, 0)!;
    expect(prober.onResponse(answerA, 0, answerA.length, relayA, 0)).toBe(true);
    const [a, b] = prober.all;
    expect(a.rttMs).not.toBeNull();
    expect(b.rttMs).not.toBeNull();
    // Someone else's transaction (netcheck's) is left alone.
    const other = answerBindingRequest(buildBindingRequest(newTransactionId()), 0, 28, self, 0)!;
    expect(prober.onResponse(other, 0, other.length, relayA, 0)).toBe(false);
  });
});

/** A relay link that records what was sent through it and whose state the test sets. */
function fakeLink(name: string, ep: Buffer): ManagedLink & { sent: number; started: boolean; stopped: boolean } {
  return {
    name, endpoint: ep, state: 'udp', sent: 0, started: false, stopped: false,
    handleDatagram: () => false,
    send() {
      this.sent++;
      return true;
    },
    start() {
      this.started = true;
    },
    stop() {
      this.stopped = true;
    },
  } as ManagedLink & { sent: number; started: boolean; stopped: boolean; state: string };
}

describe('relay links', () => {
  const eps: Record<string, Buffer> = {};
  for (const [i, n] of ['r1', 'r2', 'r3'].entries()) eps[n] = makeEndpoint(Uint8Array.of(203, 0, 113, 21 + i), 7443);

  function setup(names = ['r1', 'r2', 'r3']) {
    const opened: ReturnType<typeof fakeLink>[] = [];
    const links = new RelayLinks(new Set(names), (name) => {
      const l = fakeLink(name, eps[name] ?? makeEndpoint(Uint8Array.of(198, 51, 100, opened.length + 1), 7443));
      opened.push(l);
      return l;
    });
    links.setHome('r1', NOW);
    return { links, opened };
  }

  it("sends a relayed peer through its home relay's link, opened on demand", () => {
    const { links, opened } = setup();
    const peer = new PeerPath(Buffer.alloc(32, 1));
    expect(links.linkFor(peer, NOW)?.name).toBe('r1'); // no home relay named: the first listed (here ours too)
    peer.homeRelay = 'r2';
    expect(links.linkFor(peer, NOW)?.name).toBe('r2');
    expect(opened.map((l) => [l.name, l.started])).toEqual([['r1', true], ['r2', true]]);
    peer.homeRelay = 'nowhere'; // not advertised to us: ours
    expect(links.linkFor(peer, NOW)?.name).toBe('r1');
    expect(opened.length).toBe(2);
  });

  it('sends a peer whose record names no relay (an older agent) through the first listed relay, where older agents are', () => {
    const { links } = setup();
    links.setHome('r3', NOW);
    const old = new PeerPath(Buffer.alloc(32, 2));
    expect(links.linkFor(old, NOW)?.name).toBe('r1');
    old.homeRelay = 'nowhere';
    expect(links.linkFor(old, NOW)?.name).toBe('r3');
  });

  it("falls back to our home relay while the peer's relay does not answer", () => {
    const { links, opened } = setup();
    const peer = new PeerPath(Buffer.alloc(32, 1));
    peer.homeRelay = 'r2';
    links.linkFor(peer, NOW);
    (opened[1] as { state: string }).state = 'connecting';
    expect(links.linkFor(peer, NOW)?.name).toBe('r1');
    expect(links.nameFor(peer)).toBe('r1');
    (opened[1] as { state: string }).state = 'udp';
    expect(links.linkFor(peer, NOW)?.name).toBe('r2');
  });

  it('opens at most maxLinks links and closes idle ones, never the home one', () => {
    const names = Array.from({ length: 3 * C.maxLinks }, (_, i) => `r${i + 1}`);
    const { links, opened } = setup(names);
    const peer = new PeerPath(Buffer.alloc(32, 1));
    for (const n of names) {
      peer.homeRelay = n;
      links.linkFor(peer, NOW);
    }
    console.log(`links opened for peers on ${names.length} relays: ${opened.length} (cap ${C.maxLinks})`);
    expect(opened.length).toBe(C.maxLinks);
    links.closeIdle(NOW + C.linkIdleMs + 1);
    expect(opened.filter((l) => l.stopped).length).toBe(C.maxLinks - 1);
    expect(opened[0].stopped).toBe(false);
    expect(links.links().map(([n]) => n)).toEqual(['r1']);
  });
});

describe('the Bind resolves a relayed peer to its home relay at send time', () => {
  it('each packet goes to the endpoint of the relay the peer names now', () => {
    const sentTo: string[] = [];
    const udp: UdpPort = {
      send(_slab, _offsets, _lens, addrs, count) {
        for (let k = 0; k < count; k++) sentTo.push(formatEndpoint(addrs.subarray(k * ENDPOINT_SIZE, (k + 1) * ENDPOINT_SIZE)));
        return count;
      },
    };
    const eps = { r1: makeEndpoint(Uint8Array.of(203, 0, 113, 21), 7443), r2: makeEndpoint(Uint8Array.of(203, 0, 113, 22), 7443) };
    const opened: ReturnType<typeof fakeLink>[] = [];
    const links = new RelayLinks(new Set(['r1', 'r2']), (name) => {
      const l = fakeLink(name, eps[name as 'r1' | 'r2']);
      opened.push(l);
      return l;
    });
    links.setHome('r1', Date.now());
    const sock = new MagicSock(udp, { info() {}, warn() {}, debug() {} });
    const key = generatePrivateKey();
    sock.enablePaths(new DiscoCodec(key, publicKeyOf(key)), links);
    try {
      const peerKey = Buffer.from(publicKeyOf(generatePrivateKey()));
      const path = sock.upsertPeer(peerKey, [], 'r2');
      const slab = Buffer.alloc(200, 4);
      const send = () => sock.send(slab, Int32Array.of(0), Int32Array.of(148), [path], 1);
      send();
      sock.upsertPeer(peerKey, [], 'r1'); // the peer moved (its new record)
      send();
      (opened[1] as { state: string }).state = 'down';
      sock.upsertPeer(peerKey, [], 'r2');
      send(); // r2 does not answer: through ours
      expect(sentTo).toEqual(['203.0.113.22:7443', '203.0.113.21:7443', '203.0.113.21:7443']);
      expect(sock.pathOf(peerKey)).toMatchObject({ kind: 'relay', endpoint: 'r1' });
      expect(sameEndpoint(links.linkAt(eps.r2, 0)!.endpoint, 0, eps.r2, 0)).toBe(true);
    } finally {
      sock.stop();
    }
  });
});
