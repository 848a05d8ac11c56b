import { describe, it, expect } from 'vitest';
import { DiscoCodec, newTxid } from '../../src/paths/disco.js';
import { MagicSock, type RelayLink, type UdpPort } from '../../src/paths/magicsock.js';
import { isRelayEndpoint } from '../../src/paths/peer-path.js';
import { Device } from '../../src/wireguard/device.js';
import { ENDPOINT_SIZE, makeEndpoint, sameEndpoint } from '../../src/wireguard/endpoint.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { parsePrefix } from '../../src/ip/prefix.js';

const silent = { info() {}, warn() {}, debug() {} };

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

/**
 * Two agents whose "network" is in memory: direct datagrams pass unless `directBlocked`, and
 * a relay always carries packets between them. Checks the path layer's decisions.
 */
function world() {
  const keys = [generatePrivateKey(), generatePrivateKey()];
  const eps = [makeEndpoint(Uint8Array.of(198, 51, 100, 1), 51820), makeEndpoint(Uint8Array.of(198, 51, 100, 2), 51820)];
  const state = { directBlocked: false };
  const socks: MagicSock[] = [];
  const devices: Device[] = [];
  const relayEp = makeEndpoint(Uint8Array.of(203, 0, 113, 10), 7443);
  for (const i of [0, 1]) {
    const other = 1 - i;
    const udp: UdpPort = {
      send(slab, offsets, lens, addrs, count) {
        for (let k = 0; k < count; k++) {
          if (state.directBlocked || !sameEndpoint(addrs, k * ENDPOINT_SIZE, eps[other], 0)) continue;
          const msg = Buffer.from(slab.subarray(offsets[k], offsets[k] + lens[k]));
          queueMicrotask(() => devices[other].handleUdpBatch(msg, msg.length, Int32Array.of(msg.length), eps[i], 1));
        }
        return count;
      },
    };
    const relay: RelayLink = {
      endpoint: relayEp, name: '203.0.113.10:7443', state: 'udp',
      handleDatagram: () => false,
      send(_dst, packet) {
        const copy = Buffer.from(packet);
        queueMicrotask(() => socks[other].onRelayedPacket(Buffer.from(publicKeyOf(keys[i])), copy));
        return true;
      },
    };
    const sock = new MagicSock(udp, silent);
    const device = new Device({ privateKey: keys[i], mtu: 1420, batchSize: 8, io: sock, control: (b, o, l, a, ao) => sock.handleControl(b, o, l, a, ao) });
    sock.attach(device);
    sock.enablePaths(new DiscoCodec(keys[i], publicKeyOf(keys[i])), relay);
    sock.setLocalCandidates([eps[i]]);
    socks.push(sock);
    devices.push(device);
  }
  for (const i of [0, 1]) {
    const other = 1 - i;
    const wg = Buffer.from(publicKeyOf(keys[other]));
    const endpoint = socks[i].upsertPeer(wg, [eps[other]]);
    devices[i].addPeer({ publicKey: wg, endpoint, roaming: false, allowedIps: [parsePrefix(`100.64.0.${other + 1}/32`)!] });
  }
  return { socks, devices, keys, state, stop: () => socks.forEach((s) => s.stop()) };
}

const settle = () => new Promise((r) => setTimeout(r, 50));

describe('MagicSock path choice', () => {
  it('starts on the relay, upgrades to the direct path when pings answer, falls back when it dies', async () => {
    const w = world();
    try {
      const peerOf0 = w.devices[0].allPeers()[0];
      expect(isRelayEndpoint(peerOf0.endpoint!, 0) || w.socks[0].pathOf(peerOf0.publicKey)?.kind === 'direct').toBe(true);
      await settle();
      expect(w.socks[0].pathOf(peerOf0.publicKey)?.kind).toBe('direct');
      expect(sameEndpoint(peerOf0.endpoint!, 0, makeEndpoint(Uint8Array.of(198, 51, 100, 2), 51820), 0)).toBe(true);
      const replies = await w.socks[0].ping(peerOf0.publicKey, 2);
      expect(replies.map((r) => ('path' in r ? r.path : 'timeout'))).toEqual(['direct', 'direct']);

      w.state.directBlocked = true;
      const lost = await w.socks[0].ping(peerOf0.publicKey, 1, 100);
      expect('timeout' in lost[0]).toBe(true);
      (w.socks[0] as unknown as { tick(now: number): void }).tick(Date.now() + 6_000);
      expect(w.socks[0].pathOf(peerOf0.publicKey)?.kind).toBe('relay');
      expect(isRelayEndpoint(peerOf0.endpoint!, 0)).toBe(true);
      const viaRelay = await w.socks[0].ping(peerOf0.publicKey, 1);
      expect('path' in viaRelay[0] && viaRelay[0].path).toBe('relay');
    } finally {
      w.stop();
    }
  });

  it('rejects disco from strangers and relayed disco sealed by someone else than the relay says', async () => {
    const w = world();
    try {
      const stranger = generatePrivateKey();
      const msg = new DiscoCodec(stranger, publicKeyOf(stranger)).seal(publicKeyOf(w.keys[0]), { type: 'ping', txid: newTxid() })!;
      w.socks[0].handleControl(msg, 0, msg.length, makeEndpoint(Uint8Array.of(198, 51, 100, 9), 1), 0);
      const fromPeer = new DiscoCodec(w.keys[1], publicKeyOf(w.keys[1])).seal(publicKeyOf(w.keys[0]), { type: 'ping', txid: newTxid() })!;
      w.socks[0].onRelayedPacket(Buffer.from(publicKeyOf(stranger)), fromPeer);
      expect(w.socks[0].stats.discoRejected).toBe(2);
    } finally {
      w.stop();
    }
  });
});
