import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { encodeKey } from '../../src/crypto/keys.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { PeerLabels, registerDaemonMetrics, type DaemonMetricsSource } from '../../src/metrics/daemon.js';
import type { Device } from '../../src/wireguard/device.js';
import { deliver, ipv4Packet, makeSide, sendFromTun, udpEndpoint, type Side } from '../wireguard/memory-link.js';
import { samples, valueOf } from './exposition.js';

type PeerStatusPath = DeviceStatus['peers'][number]['path'];

/** The fields of the daemon's status the collectors read, from a real Device (as Daemon.status() builds them). */
function statusOf(device: Device, path?: PeerStatusPath): DeviceStatus {
  return {
    interface: 'test0', publicKey: encodeKey(device.local.publicKey), listenPort: 0, addresses: [], mtu: 1420, pid: process.pid, startedAt: 0,
    dropped: { ...device.dropped },
    peers: device.allPeers().map((p) => ({
      publicKey: encodeKey(p.publicKey), endpoint: null, allowedIps: [], latestHandshake: p.latestHandshakeAt, handshakes: p.handshakes,
      rxBytes: p.rxBytes, txBytes: p.txBytes, persistentKeepalive: 0, dropped: { ...p.dropped }, path,
    })),
  };
}
function pump(a: Side, b: Side): void {
  for (let i = 0; i < 20 && deliver(a, b) + deliver(b, a) > 0; i++);
}

function pair(): { a: Side; b: Side } {
  const aKey = generatePrivateKey();
  const bKey = generatePrivateKey();
  const sides: Side[] = [];
  const a = makeSide(aKey, [192, 0, 2, 1], 51820, () => [sides[1].inbox]);
  const b = makeSide(bKey, [192, 0, 2, 2], 51821, () => [sides[0].inbox]);
  sides.push(a, b);
  a.device.addPeer({ publicKey: publicKeyOf(bKey), endpoint: udpEndpoint(b), allowedIps: [parsePrefix('100.64.0.2/32')!] });
  b.device.addPeer({ publicKey: publicKeyOf(aKey), allowedIps: [parsePrefix('100.64.0.1/32')!] });
  return { a, b };
}

const packet = (n: number) => ipv4Packet([100, 64, 0, 1], [100, 64, 0, 2], Buffer.alloc(n, 7));

describe('daemon metrics over real Devices', () => {
  it('per-peer bytes, handshakes and drops by reason are read from the device at scrape time', async () => {
    const { a, b } = pair();
    const registry = new Registry();
    let statusCalls = 0;
    registerDaemonMetrics(registry, { status: () => (statusCalls++, statusOf(b.device)), peerName: () => 'alpha' });
    const before = await registry.metrics();
    expect(valueOf(before, 'agentvpn_peer_rx_bytes_total', { peer: 'alpha' })).toBe(0);
    expect(valueOf(before, 'agentvpn_peers')).toBe(1);
    for (let i = 0; i < 10; i++) sendFromTun(a, [packet(1000)]);
    pump(a, b);
    // A replayed transport message is dropped and counted by reason.
    sendFromTun(a, [packet(100)]);
    const captured = b.inbox.map((m) => Buffer.from(m));
    pump(a, b);
    b.inbox.push(...captured);
    deliver(b, a);
    await new Promise((r) => setTimeout(r, 150)); // past the shared reading of the first scrape
    const after = await registry.metrics();
    const rx = valueOf(after, 'agentvpn_peer_rx_bytes_total', { peer: 'alpha' })!;
    console.log(`b received ${rx} bytes from alpha in 11 packets; scrapes read status ${statusCalls} times for ${samples(after, 'agentvpn_peer_drops_total').length} drop series`);
    expect(rx).toBe(b.device.allPeers()[0].rxBytes);
    expect(rx).toBeGreaterThan(11 * 100);
    expect(valueOf(after, 'agentvpn_rx_bytes_total')).toBe(rx);
    expect(valueOf(after, 'agentvpn_peer_handshakes_total', { peer: 'alpha' })).toBe(1);
    expect(valueOf(after, 'agentvpn_peer_last_handshake_timestamp_seconds', { peer: 'alpha' })).toBeGreaterThan(Date.now() / 1000 - 60);
    expect(valueOf(after, 'agentvpn_peer_drops_total', { peer: 'alpha', reason: 'replay' })).toBe(1);
    expect(valueOf(after, 'agentvpn_peer_drops_total', { peer: 'alpha', reason: 'decryptFailed' })).toBe(0);
    expect(valueOf(after, 'agentvpn_drops_total', { reason: 'malformed' })).toBe(0);
    expect(valueOf(after, 'agentvpn_peer_info', { peer: 'alpha', public_key: encodeKey(a.device.local.publicKey) })).toBe(1);
    // One status per scrape, however many metrics read it.
    expect(statusCalls).toBe(2);
  });

  it('path kind and RTT for fleet peers; static peers are labelled by key; no peer name is used twice', async () => {
    const { a, b } = pair();
    sendFromTun(a, [packet(10)]);
    pump(a, b);
    const viaRelay: PeerStatusPath = { kind: 'relay', endpoint: 'relay', rttMs: 12.5 };
    const registry = new Registry();
    const source: DaemonMetricsSource = { status: () => statusOf(b.device, viaRelay) };
    registerDaemonMetrics(registry, source);
    const text = await registry.metrics();
    const key = encodeKey(a.device.local.publicKey);
    expect(valueOf(text, 'agentvpn_peer_path', { peer: key, kind: 'relay' })).toBe(1);
    expect(valueOf(text, 'agentvpn_peer_path_rtt_seconds', { peer: key })).toBeCloseTo(0.0125);

    // Two peers claiming one name (a rename seen half-way): the second keeps its key as label.
    const twice = new Registry();
    registerDaemonMetrics(twice, {
      status: () => {
        const s = statusOf(b.device);
        return { ...s, peers: [s.peers[0], { ...s.peers[0], publicKey: 'other-key' }] };
      },
      peerName: () => 'same',
    });
    const peers = samples(await twice.metrics(), 'agentvpn_peer_rx_bytes_total').map((s) => s.labels.peer);
    expect(peers.sort()).toEqual(['other-key', 'same']);
  });
});

describe('peer labels', () => {
  const status = (peers: string[]): DeviceStatus => ({
    interface: 'test0', publicKey: 'self', listenPort: 0, addresses: [], mtu: 1420, pid: 1, startedAt: 0, dropped: {},
    peers: peers.map((publicKey) => ({ publicKey, endpoint: null, allowedIps: [], latestHandshake: null, handshakes: 0, rxBytes: 0, txBytes: 0, persistentKeepalive: 0, dropped: {} })),
  });

  it('a member renaming itself on every scrape cannot mint series: its label stays until its key changes', async () => {
    let n = 0;
    const registry = new Registry();
    let keys = ['k1'];
    registerDaemonMetrics(registry, { status: () => status(keys), peerName: (k) => `${k}-name-${n++}` });
    const seen = new Set<string>();
    const scrapes = 30;
    for (let i = 0; i < scrapes; i++) {
      for (const s of samples(await registry.metrics(), 'agentvpn_peer_rx_bytes_total')) seen.add(s.labels.peer);
      await new Promise((r) => setTimeout(r, 105)); // past the shared reading: every scrape reads the source again
      if (i === 14) keys = ['k2']; // a key rotation: a new peer for the device, a fresh label
    }
    console.log(`${scrapes} scrapes of a peer renaming itself each time (one key rotation): ${seen.size} peer label values, asked ${n} times`);
    expect(n).toBeGreaterThanOrEqual(2);
    expect([...seen].sort()).toEqual(['k1-name-0', 'k2-name-1']);
  }, 20_000);

  it('a name arriving late replaces the key; a newcomer with a name in use is labelled by its key', () => {
    const names = new Map<string, string>();
    const labels = new PeerLabels((k) => names.get(k));
    expect(labels.label(status(['a'])).map((p) => p.peer)).toEqual(['a']);
    names.set('a', 'alpha');
    expect(labels.label(status(['a'])).map((p) => p.peer)).toEqual(['alpha']);
    names.set('b', 'alpha');
    expect(labels.label(status(['b', 'a'])).map((p) => p.peer)).toEqual(['b', 'alpha']);
  });
});
