import { describe, expect, it } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { DiscoCodec, newTxid } from '../../src/paths/disco.js';
import { discoBudget } from '../../src/paths/constants.js';
import { ENDPOINT_SIZE, makeEndpoint, sameEndpoint } from '../../src/net/endpoint.js';
import { MagicSock, type UdpPort } from '../../src/paths/magicsock.js';
import type { RelayLink } from '../../src/paths/relay-links.js';
import { world } from './world.js';

const settle = () => new Promise((r) => setTimeout(r, 50));
const attacker = makeEndpoint(Uint8Array.of(203, 0, 113, 66), 4444);

/** 5,000 forged disco messages from where the peer is expected: they spend its lane (and with it its share of the total). */
function spendExpectedLane(w: ReturnType<typeof world>): void {
  const forged = Buffer.alloc(57 + 9 + 12 + 16);
  forged[0] = 0xa0;
  Buffer.from(publicKeyOf(w.keys[1])).copy(forged, 1);
  for (let i = 0; i < 5_000; i++) {
    forged.writeUInt32BE(i, 40);
    w.socks[0].receive(forged, forged.length, Int32Array.of(forged.length), w.eps[1], 1);
  }
}

describe('disco under attack (issue 7 classes 3 and 9)', () => {
  it('a captured ping replayed 1,000 times (from the attacker and from the peer\'s own address) earns no pong', async () => {
    const w = world();
    try {
      await settle();
      const ping = new DiscoCodec(w.keys[1], publicKeyOf(w.keys[1])).seal(publicKeyOf(w.keys[0]), { type: 'ping', txid: newTxid() })!;
      const stats = w.socks[0].stats;
      const out0 = stats.discoOut;
      w.socks[0].receive(ping, ping.length, Int32Array.of(ping.length), w.eps[1], 1);
      const answered = stats.discoOut - out0;
      expect(answered).toBeGreaterThanOrEqual(1); // the original gets its pong
      for (let i = 0; i < 1000; i++) w.socks[0].receive(ping, ping.length, Int32Array.of(ping.length), i % 2 ? attacker : w.eps[1], 1);
      const replayPongs = stats.discoOut - out0 - answered;
      console.log(`1000 replays: ${replayPongs} pongs, ${stats.discoReplayed} refused as replays, ${stats.discoShed} shed by budget`);
      expect(replayPongs).toBe(0);
      expect(stats.discoReplayed + stats.discoShed).toBe(1000);
    } finally {
      w.stop();
    }
  });

  it('refuses a message stamped more than 5 minutes from our clock', async () => {
    const w = world();
    try {
      const tenMinutesAgo = (Date.now() - 10 * 60_000) * 16;
      const old = new DiscoCodec(w.keys[1], publicKeyOf(w.keys[1])).seal(publicKeyOf(w.keys[0]), { type: 'ping', txid: newTxid() }, tenMinutesAgo)!;
      const before = w.socks[0].stats.discoReplayed;
      w.socks[0].receive(old, old.length, Int32Array.of(old.length), w.eps[1], 1);
      expect(w.socks[0].stats.discoReplayed).toBe(before + 1);
    } finally {
      w.stop();
    }
  });

  it('100,000 forged messages claiming the peer\'s key cost at most their budget; the real peer\'s pings still get pongs', async () => {
    const w = world();
    try {
      await settle();
      const peerKey = Buffer.from(publicKeyOf(w.keys[1]));
      const forged = Buffer.alloc(57 + 9 + 12 + 16);
      forged[0] = 0xa0;
      peerKey.copy(forged, 1);
      const stats = w.socks[0].stats;
      const start = performance.now();
      for (let i = 0; i < 100_000; i++) {
        forged.writeUInt32BE(i, 40); // a fresh "nonce" each time
        w.socks[0].receive(forged, forged.length, Int32Array.of(forged.length), attacker, 1);
      }
      const ms = performance.now() - start;
      console.log(`100k forged disco: ${stats.discoShed} shed before any AEAD, ${stats.discoRejected} failed authentication, ${ms.toFixed(0)} ms`);
      // The elsewhere lane's burst, plus what it refilled while the loop ran (slow on a loaded machine).
      const { burst, rate } = discoBudget.elsewhere;
      expect(stats.discoRejected).toBeLessThanOrEqual(burst + Math.ceil((rate * ms) / 1000) + 1);
      expect(stats.discoShed).toBeGreaterThan(99_000);
      const replies = await w.socks[0].ping(w.devices[0].allPeers()[0].publicKey, 2);
      expect(replies.map((r) => ('path' in r ? r.path : 'timeout'))).toEqual(['direct', 'direct']);
    } finally {
      w.stop();
    }
  });

  it('replies to our pings get past the budgets even while a flood from the peer\'s own address spends them all', async () => {
    const w = world();
    try {
      await settle();
      const peer = w.devices[0].allPeers()[0];
      const stats = w.socks[0].stats;
      spendExpectedLane(w);
      expect(stats.discoShed).toBeGreaterThan(4_000);
      const replies = await w.socks[0].ping(peer.publicKey, 3);
      console.log(`expected lane spent (${stats.discoShed} shed): ping replies ${replies.map((r) => ('path' in r ? r.path : 'timeout')).join(', ')}`);
      expect(replies.map((r) => ('path' in r ? r.path : 'timeout'))).toEqual(['direct', 'direct', 'direct']);
      expect(w.socks[0].pathOf(peer.publicKey)?.kind).toBe('direct');
    } finally {
      w.stop();
    }
  });

  it('a ping from the peer that comes before its pong does not take the pong\'s place past the budgets', async () => {
    const w = world();
    try {
      await settle();
      const peer = w.devices[0].allPeers()[0];
      spendExpectedLane(w);
      // The peer's own ping (it probes us too) arrives between our ping and its pong, three times.
      const peerCodec = new DiscoCodec(w.keys[1], publicKeyOf(w.keys[1]));
      const paths: string[] = [];
      for (let i = 0; i < 3; i++) {
        const reply = w.socks[0].ping(peer.publicKey, 1);
        const theirs = peerCodec.seal(publicKeyOf(w.keys[0]), { type: 'ping', txid: newTxid() })!;
        w.socks[0].receive(theirs, theirs.length, Int32Array.of(theirs.length), w.eps[1], 1);
        paths.push(...(await reply).map((r) => ('path' in r ? r.path : 'timeout')));
      }
      console.log(`expected lane spent, the peer's ping before each pong: replies ${paths.join(', ')}`);
      expect(paths).toEqual(['direct', 'direct', 'direct']);
    } finally {
      w.stop();
    }
  });

  it('a member\'s own sealed pings with a forged source are budgeted, and get a pong each but at most one ping back a second', async () => {
    // M (a member: its key seals valid pings) forges the victim's address as their source; the victim is one of M's candidates.
    const [dKey, mKey] = [generatePrivateKey(), generatePrivateKey()];
    const [dPub, mPub] = [Buffer.from(publicKeyOf(dKey)), Buffer.from(publicKeyOf(mKey))];
    const victim = makeEndpoint(Uint8Array.of(192, 0, 2, 77), 443);
    const toVictim = { datagrams: 0, bytes: 0 };
    const udp: UdpPort = {
      send(_slab, _offsets, lens, addrs, count) {
        for (let k = 0; k < count; k++) {
          if (!sameEndpoint(addrs, k * ENDPOINT_SIZE, victim, 0)) continue;
          toVictim.datagrams++;
          toVictim.bytes += lens[k];
        }
        return count;
      },
    };
    const relay: RelayLink = { endpoint: makeEndpoint(Uint8Array.of(203, 0, 113, 10), 7443), name: 'r', state: 'udp', handleDatagram: () => false, send: () => true };
    const d = new MagicSock(udp, { info() {}, warn() {}, debug() {} });
    try {
      d.enablePaths(new DiscoCodec(dKey, dPub), relay);
      d.upsertPeer(mPub, [victim]);
      await settle();
      Object.assign(toVictim, { datagrams: 0, bytes: 0 });
      const asM = new DiscoCodec(mKey, mPub);
      let sent = 0;
      let sentBytes = 0;
      const start = performance.now();
      for (let round = 0; round < 40; round++) {
        for (let i = 0; i < 250; i++, sent++) {
          const ping = asM.seal(dPub, { type: 'ping', txid: newTxid() })!;
          d.receive(ping, ping.length, Int32Array.of(ping.length), victim, 1);
          sentBytes += ping.length;
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      const seconds = (performance.now() - start) / 1000;
      const { rate, burst } = discoBudget.expected;
      console.log(`${sent} forged-source pings (${sentBytes} bytes) in ${seconds.toFixed(2)} s: ${d.stats.discoIn} let in, ${d.stats.discoShed} shed; to the victim ${toVictim.datagrams} datagrams, ${toVictim.bytes} bytes`);
      const allowed = burst + Math.ceil(rate * seconds) + discoBudget.maxAwaitedReplies + 1;
      expect(d.stats.discoIn).toBeLessThanOrEqual(allowed);
      // A pong per ping let in, a ping back per second, and the probe rounds' own pings.
      expect(toVictim.datagrams).toBeLessThanOrEqual(d.stats.discoIn + Math.ceil(seconds) + 4);
      expect(toVictim.bytes).toBeLessThan(sentBytes / 10);
    } finally {
      d.stop();
    }
  });

  it('call-me-maybes naming 16 other addresses get each pinged at most once per 5 s, not 16 pings per message', async () => {
    const [dKey, mKey] = [generatePrivateKey(), generatePrivateKey()];
    const [dPub, mPub] = [Buffer.from(publicKeyOf(dKey)), Buffer.from(publicKeyOf(mKey))];
    const victims = Array.from({ length: 16 }, (_, i) => makeEndpoint(Uint8Array.of(192, 0, 2, 100 + i), 53));
    let toVictims = 0;
    const udp: UdpPort = {
      send(_slab, _offsets, _lens, addrs, count) {
        for (let k = 0; k < count; k++) if (victims.some((v) => sameEndpoint(addrs, k * ENDPOINT_SIZE, v, 0))) toVictims++;
        return count;
      },
    };
    const relay: RelayLink = { endpoint: makeEndpoint(Uint8Array.of(203, 0, 113, 10), 7443), name: 'r', state: 'udp', handleDatagram: () => false, send: () => true };
    const d = new MagicSock(udp, { info() {}, warn() {}, debug() {} });
    try {
      d.enablePaths(new DiscoCodec(dKey, dPub), relay);
      d.upsertPeer(mPub, [makeEndpoint(Uint8Array.of(198, 51, 100, 2), 51820)]); // an idle fleet peer
      await settle();
      const asM = new DiscoCodec(mKey, mPub);
      for (let i = 0; i < 3; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 1_050)); // past the once-a-second-per-peer limit
        d.onRelayedPacket(mPub, asM.seal(dPub, { type: 'call-me-maybe', candidates: victims })!);
      }
      await settle();
      console.log(`3 call-me-maybes naming 16 addresses, 1 s apart: ${toVictims} pings to them (48 before)`);
      expect(toVictims).toBeLessThanOrEqual(16);
    } finally {
      d.stop();
    }
  });
});
