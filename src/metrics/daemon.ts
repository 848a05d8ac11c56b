import { Registry, collectDefaultMetrics } from 'prom-client';
import type { DeviceStatus, PeerStatus } from '../daemon/status-types.js';
import { scrapedCounter, scrapedGauge, sharedReading } from './collect.js';
import { parseMetricsListen } from './listen.js';
import { MetricsServer, type MetricsLog } from './server.js';

/** What the daemon's metrics are read from: the daemon's own status (its counters), at scrape time. */
export interface DaemonMetricsSource {
  status(): DeviceStatus;
  /** Fleet mode: the agent name behind a peer's WireGuard key (base64); static peers are labelled by key. */
  peerName?(wgKey: string): string | undefined;
}

interface LabelledPeer {
  peer: string;
  status: PeerStatus;
}

/**
 * The `peer` label of each peer: the agent's name, else its key. A label is pinned to the peer's
 * key for as long as the peer exists: names are chosen by the members themselves, and one that
 * renamed itself on every scrape would otherwise mint a new set of series in Prometheus each
 * time. A renamed agent keeps its old label until its key changes (a rotation: at most 64) or the
 * daemon restarts. Names are unique in a network; should two peers still show one (a rename seen
 * half-way), the second is labelled by its key, so no two peers ever share a series.
 */
export class PeerLabels {
  private byKey = new Map<string, string>();

  constructor(private readonly nameOf: DaemonMetricsSource['peerName']) {}

  label(status: DeviceStatus): LabelledPeer[] {
    // Pinned labels first, so a newcomer showing a name already in use never takes it from its holder.
    const used = new Set<string>();
    for (const p of status.peers) {
      const pinned = this.byKey.get(p.publicKey);
      if (pinned !== undefined) used.add(pinned);
    }
    const next = new Map<string, string>();
    const labelled = status.peers.map((p) => {
      let peer = this.byKey.get(p.publicKey);
      if (peer === undefined) {
        const name = this.nameOf?.(p.publicKey);
        peer = name !== undefined && !used.has(name) ? name : p.publicKey;
        used.add(peer);
      }
      // Only a name is pinned: a key stands in until the name is known (admission may lag a scrape).
      if (peer !== p.publicKey) next.set(p.publicKey, peer);
      return { peer, status: p };
    });
    this.byKey = next; // peers that went away are forgotten
    return labelled;
  }
}

/**
 * Registers the daemon's metrics on `registry`: per peer (bytes, packets where the device counts
 * them, handshakes, drops by reason, path kind and RTT), device totals and process metrics.
 * Every value is read from the daemon's status when Prometheus scrapes; the packet path is untouched.
 */
export function registerDaemonMetrics(registry: Registry, source: DaemonMetricsSource): void {
  const labels = new PeerLabels(source.peerName?.bind(source));
  const read = sharedReading(() => {
    const status = source.status();
    return { status, peers: labels.label(status) };
  });
  const perPeer = (name: string, help: string, value: (p: PeerStatus) => number | undefined) => scrapedCounter(registry, {
    name, help, labelNames: ['peer'],
    fill: (emit) => {
      for (const { peer, status } of read().peers) {
        const v = value(status);
        if (v !== undefined) emit({ peer }, v);
      }
    },
  });

  scrapedGauge(registry, { name: 'agentvpn_peers', help: 'Peers configured on the device', fill: (emit) => emit({}, read().peers.length) });
  scrapedGauge(registry, {
    name: 'agentvpn_peer_info', help: 'A peer and its WireGuard public key (value 1)', labelNames: ['peer', 'public_key'],
    fill: (emit) => read().peers.forEach(({ peer, status }) => emit({ peer, public_key: status.publicKey }, 1)),
  });
  perPeer('agentvpn_peer_rx_bytes_total', 'Bytes of authenticated WireGuard transport messages received from the peer', (p) => p.rxBytes);
  perPeer('agentvpn_peer_tx_bytes_total', 'Bytes of WireGuard transport messages sent to the peer', (p) => p.txBytes);
  perPeer('agentvpn_peer_rx_packets_total', 'Authenticated transport messages received from the peer (where the device counts them)', (p) => p.rxPackets);
  perPeer('agentvpn_peer_tx_packets_total', 'Transport messages sent to the peer (where the device counts them)', (p) => p.txPackets);
  perPeer('agentvpn_peer_handshakes_total', 'Handshakes completed with the peer (rekeys included)', (p) => p.handshakes);
  scrapedGauge(registry, {
    name: 'agentvpn_peer_last_handshake_timestamp_seconds', help: 'Unix time of the last completed handshake with the peer', labelNames: ['peer'],
    fill: (emit) => read().peers.forEach(({ peer, status }) => status.latestHandshake !== null && emit({ peer }, status.latestHandshake / 1000)),
  });
  scrapedCounter(registry, {
    name: 'agentvpn_peer_drops_total', help: "Packets dropped for the peer, by reason (src/wireguard/counters.ts)", labelNames: ['peer', 'reason'],
    fill: (emit) => read().peers.forEach(({ peer, status }) => Object.entries(status.dropped).forEach(([reason, v]) => emit({ peer, reason }, v))),
  });
  scrapedGauge(registry, {
    name: 'agentvpn_peer_path', help: 'The path in use to a fleet peer (value 1): direct, or through the relay', labelNames: ['peer', 'kind'],
    fill: (emit) => read().peers.forEach(({ peer, status }) => status.path && emit({ peer, kind: status.path.kind }, 1)),
  });
  scrapedGauge(registry, {
    name: 'agentvpn_peer_path_rtt_seconds', help: 'Last measured round-trip time of the path in use to a fleet peer (disco ping)', labelNames: ['peer'],
    fill: (emit) => read().peers.forEach(({ peer, status }) => status.path?.rttMs != null && emit({ peer }, status.path.rttMs / 1000)),
  });

  const sum = (value: (p: PeerStatus) => number) => read().peers.reduce((n, { status }) => n + value(status), 0);
  scrapedCounter(registry, {
    name: 'agentvpn_rx_bytes_total', help: 'Bytes received from all current peers (a removed peer takes its bytes with it)', fill: (emit) => emit({}, sum((p) => p.rxBytes)),
  });
  scrapedCounter(registry, {
    name: 'agentvpn_tx_bytes_total', help: 'Bytes sent to all current peers (a removed peer takes its bytes with it)', fill: (emit) => emit({}, sum((p) => p.txBytes)),
  });
  scrapedCounter(registry, {
    name: 'agentvpn_drops_total', help: 'Packets the device dropped that belong to no peer (or could not be sent or written), by reason (src/wireguard/counters.ts)', labelNames: ['reason'],
    fill: (emit) => Object.entries(read().status.dropped).forEach(([reason, v]) => emit({ reason }, v)),
  });
  scrapedCounter(registry, {
    name: 'agentvpn_path_events_total', help: 'Fleet mode: the path layer\'s counters (disco in/out, shed, refused, replayed; relayed packets in/out, dropped)', labelNames: ['event'],
    fill: (emit) => Object.entries(read().status.pathStats ?? {}).forEach(([event, v]) => emit({ event }, v)),
  });
  collectDefaultMetrics({ register: registry });
}

/**
 * Serves the daemon's metrics on `listen` (`--metrics [HOST:]PORT`, loopback unless a host is
 * written out). Returns the running server; stop() closes it.
 */
export async function startDaemonMetrics(source: DaemonMetricsSource, listen: string, log: MetricsLog): Promise<MetricsServer> {
  const registry = new Registry();
  registerDaemonMetrics(registry, source);
  const server = new MetricsServer(registry, parseMetricsListen(listen), log);
  await server.start();
  return server;
}
