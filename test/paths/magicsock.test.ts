import { describe, it, expect } from 'vitest';
import { DiscoCodec, newTxid } from '../../src/paths/disco.js';
import { makeEndpoint, sameEndpoint } from '../../src/net/endpoint.js';
import { ipv4Packet, sendFromTun, type Side } from '../wireguard/memory-link.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { world } from './world.js';

describe('disco codec', () => {
  it('seals between two static keys; tampering, other keys and garbage are rejected', () => {
    const a = generatePrivateKey();
    const b = generatePrivateKey();
    const ca = new DiscoCodec(a, publicKeyOf(a));
    const cb = new DiscoCodec(b, publicKeyOf(b));
    const txid = newTxid();
    const sealed = ca.seal(publicKeyOf(b), { type: 'ping', txid })!;
    const opened = cb.open(sealed, 0, sealed.length)!;
    expect(opened.message).toEqual({ type: 'ping', txid });
    expect(Buffer.from(opened.from)).toEqual(Buffer.from(publicKeyOf(a)));
    const bad = Buffer.from(sealed);
    bad[bad.length - 1] ^= 1;
    expect(cb.open(bad, 0, bad.length)).toBeNull();
    const c = generatePrivateKey();
    expect(new DiscoCodec(c, publicKeyOf(c)).open(sealed, 0, sealed.length)).toBeNull();
    expect(cb.open(Buffer.alloc(80, 0xa0), 0, 80)).toBeNull();
    const cands = [makeEndpoint(Uint8Array.of(198, 51, 100, 7), 51820), makeEndpoint(Uint8Array.of(203, 0, 113, 9), 4000)];
    const cmm = ca.seal(publicKeyOf(b), { type: 'call-me-maybe', candidates: cands })!;
    const got = cb.open(cmm, 0, cmm.length)!.message as { candidates: Buffer[] };
    expect(got.candidates.map((x) => x.toString('hex'))).toEqual(cands.map((x) => x.toString('hex')));
  });
});

const settle = () => new Promise((r) => setTimeout(r, 50));

describe('MagicSock path choice', () => {
  it('starts on the relay, upgrades to the direct path when pings answer, falls back when it dies', async () => {
    const w = world();
    try {
      const peerOf0 = w.devices[0].allPeers()[0];
      // The peer's endpoint is its path for its whole life: the Bind resolves it at each send.
      const endpoint = peerOf0.endpoint!;
      expect(endpoint.direct === null || w.socks[0].pathOf(peerOf0.publicKey)?.kind === 'direct').toBe(true);
      await settle();
      expect(w.socks[0].pathOf(peerOf0.publicKey)?.kind).toBe('direct');
      expect(peerOf0.endpoint).toBe(endpoint);
      expect(sameEndpoint(endpoint.direct!, 0, makeEndpoint(Uint8Array.of(198, 51, 100, 2), 51820), 0)).toBe(true);
      const replies = await w.socks[0].ping(peerOf0.publicKey, 2);
      expect(replies.map((r) => ('path' in r ? r.path : 'timeout'))).toEqual(['direct', 'direct']);

      w.state.directBlocked = true;
      const lost = await w.socks[0].ping(peerOf0.publicKey, 1, 100);
      expect('timeout' in lost[0]).toBe(true);
      (w.socks[0] as unknown as { tick(now: number): void }).tick(Date.now() + 6_000);
      expect(w.socks[0].pathOf(peerOf0.publicKey)?.kind).toBe('relay');
      expect(peerOf0.endpoint).toBe(endpoint);
      expect(endpoint.direct).toBeNull();
      const viaRelay = await w.socks[0].ping(peerOf0.publicKey, 1);
      expect('path' in viaRelay[0] && viaRelay[0].path).toBe('relay');
    } finally {
      w.stop();
    }
  });

  it('carries WireGuard through the relay in batches when there is no direct path, then directly', async () => {
    const w = world();
    try {
      w.state.directBlocked = true;
      const packets = (tag: string) => Array.from({ length: 20 }, (_, i) => ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.from(`${tag}${i}`)));
      sendFromTun({ device: w.devices[0] } as Side, packets('r'));
      await settle();
      sendFromTun({ device: w.devices[0] } as Side, packets('s'));
      await settle();
      const relayed = w.tunOut[1].map((p) => p.subarray(28).toString());
      console.log(`relayed: ${relayed.length} packets, sock stats ${JSON.stringify(w.socks[1].stats)}`);
      expect(relayed.filter((t) => t.startsWith('s'))).toHaveLength(20);
      expect(w.socks[1].stats.relayedIn).toBeGreaterThanOrEqual(20);
      expect(w.state.relayFrames).toBeGreaterThanOrEqual(20); // as SEND frames in the UDP batches
      expect(w.devices[1].allPeers()[0].endpoint!.direct).toBeNull(); // relayed packets never move an endpoint
      w.state.directBlocked = false;
      await w.socks[0].ping(w.devices[0].allPeers()[0].publicKey, 1);
      await settle();
      expect(w.socks[0].pathOf(w.devices[0].allPeers()[0].publicKey)?.kind).toBe('direct');
      const before = w.socks[1].stats.relayedIn;
      sendFromTun({ device: w.devices[0] } as Side, packets('d'));
      await settle();
      expect(w.tunOut[1].filter((p) => p.subarray(28).toString().startsWith('d'))).toHaveLength(20);
      expect(w.socks[1].stats.relayedIn).toBe(before);
    } finally {
      w.stop();
    }
  });

  it('rejects disco from strangers and relayed disco sealed by someone else than the relay says', async () => {
    const w = world();
    try {
      const stranger = generatePrivateKey();
      const msg = new DiscoCodec(stranger, publicKeyOf(stranger)).seal(publicKeyOf(w.keys[0]), { type: 'ping', txid: newTxid() })!;
      w.socks[0].receive(msg, msg.length, Int32Array.of(msg.length), makeEndpoint(Uint8Array.of(198, 51, 100, 9), 1), 1);
      const fromPeer = new DiscoCodec(w.keys[1], publicKeyOf(w.keys[1])).seal(publicKeyOf(w.keys[0]), { type: 'ping', txid: newTxid() })!;
      w.socks[0].onRelayedPacket(Buffer.from(publicKeyOf(stranger)), fromPeer);
      expect(w.socks[0].stats.discoRejected).toBe(2);
    } finally {
      w.stop();
    }
  });
});
