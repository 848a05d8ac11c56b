import { describe, expect, it } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { DiscoCodec, newTxid } from '../../src/paths/disco.js';
import { discoBudget } from '../../src/paths/constants.js';
import { makeEndpoint } from '../../src/net/endpoint.js';
import { world } from './world.js';

const settle = () => new Promise((r) => setTimeout(r, 50));
const attacker = makeEndpoint(Uint8Array.of(203, 0, 113, 66), 4444);

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
      const forged = Buffer.alloc(57 + 9 + 12 + 16);
      forged[0] = 0xa0;
      Buffer.from(publicKeyOf(w.keys[1])).copy(forged, 1);
      const stats = w.socks[0].stats;
      // Forged disco from where the peer is expected spends its lane (and with it its share of the total).
      for (let i = 0; i < 5_000; i++) {
        forged.writeUInt32BE(i, 40);
        w.socks[0].receive(forged, forged.length, Int32Array.of(forged.length), w.eps[1], 1);
      }
      expect(stats.discoShed).toBeGreaterThan(4_000);
      const replies = await w.socks[0].ping(peer.publicKey, 3);
      console.log(`expected lane spent (${stats.discoShed} shed): ping replies ${replies.map((r) => ('path' in r ? r.path : 'timeout')).join(', ')}`);
      expect(replies.map((r) => ('path' in r ? r.path : 'timeout'))).toEqual(['direct', 'direct', 'direct']);
      expect(w.socks[0].pathOf(peer.publicKey)?.kind).toBe('direct');
    } finally {
      w.stop();
    }
  });
});
