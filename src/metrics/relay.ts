import { Registry, collectDefaultMetrics } from 'prom-client';
import type { DropReason, RelayStats, RunningRelay } from '../relay/server.js';
import type { ConnectionGuard } from '../net/connection-guard.js';
import { scrapedCounter, scrapedGauge, sharedReading } from './collect.js';
import { registerConnectionMetrics } from './connections.js';
import { parseMetricsListen } from './listen.js';
import { MetricsServer, type MetricsLog } from './server.js';

/** Every drop reason, so each series exists (at 0) from the first scrape; the type makes it complete. */
const DROP_REASONS: Record<DropReason, true> = {
  garbage: true, oversized: true, 'bad-signature': true, 'stale-timestamp': true, 'not-allowed': true, 'hello-rate': true, 'hello-source-rate': true,
  'not-registered': true, 'relay-full': true, 'fair-share': true, 'peer-not-here': true, 'other-network': true, 'rate-limit': true, 'byte-limit': true,
  'destination-busy': true, 'tcp-backlog': true, 'tcp-connections': true, 'send-error': true, 'bad-challenge': true, 'challenge-rate': true,
  'challenge-source-rate': true, 'bad-version': true, 'peer-address-rate': true, 'wrong-relay': true, 'stun-rate': true, 'stun-source-rate': true,
};

/**
 * Registers a relay's metrics (the standalone relay's, or the registry's built-in one): sessions,
 * forwarded packets and bytes, STUN answers, hello verifications, drops by reason. Read from the
 * relay's own counters at scrape time; `stats` returns null while there is no relay.
 */
export function registerRelayMetrics(registry: Registry, stats: () => RelayStats | null): void {
  const read = sharedReading(stats);
  const counter = (name: string, help: string, value: (s: RelayStats) => number) => scrapedCounter(registry, {
    name, help, fill: (emit) => {
      const s = read();
      if (s) emit({}, value(s));
    },
  });
  scrapedGauge(registry, {
    name: 'agentvpn_relay_sessions', help: 'Agents registered with the relay now, by transport', labelNames: ['transport'],
    fill: (emit) => {
      const s = read();
      if (!s) return;
      emit({ transport: 'udp' }, s.udpClients);
      emit({ transport: 'tcp' }, s.tcpClients);
    },
  });
  counter('agentvpn_relay_sessions_opened_total', 'Relay sessions opened (an agent registered that had none)', (s) => s.sessionsOpened);
  counter('agentvpn_relay_forwarded_packets_total', 'Packets forwarded from one agent to another', (s) => s.forwardedPackets);
  counter('agentvpn_relay_forwarded_bytes_total', 'Payload bytes forwarded from one agent to another', (s) => s.forwardedBytes);
  counter('agentvpn_relay_stun_answered_total', 'STUN binding requests answered', (s) => s.stunAnswered);
  counter('agentvpn_relay_challenges_answered_total', 'Hello challenges sent (to requests, and to hellos whose challenge was not for their source)', (s) => s.challengesAnswered);
  counter('agentvpn_relay_hello_verifications_total', 'Hello signatures checked (the costly step the hello budgets bound)', (s) => s.helloVerifications);
  scrapedCounter(registry, {
    name: 'agentvpn_relay_drops_total', help: 'Frames and datagrams the relay dropped, by reason (src/relay/server.ts DropReason)', labelNames: ['reason'],
    fill: (emit) => {
      const s = read();
      if (!s) return;
      for (const reason of Object.keys(DROP_REASONS) as DropReason[]) emit({ reason }, s.dropped[reason] ?? 0);
    },
  });
}

/**
 * Serves a standalone relay's metrics (and process metrics) on `listen` (`--metrics [HOST:]PORT`),
 * with its TCP fallback's connection guard.
 */
export async function startRelayMetrics(relay: RunningRelay, guard: ConnectionGuard, listen: string, log: MetricsLog): Promise<MetricsServer> {
  const registry = new Registry();
  registerRelayMetrics(registry, () => relay.stats());
  registerConnectionMetrics(registry, { open: 'agentvpn_relay_tcp_connections', closed: 'agentvpn_relay_tcp_connections_refused_total', what: 'The relay\'s TCP fallback' },
    () => guard.stats());
  collectDefaultMetrics({ register: registry });
  const server = new MetricsServer(registry, parseMetricsListen(listen), log);
  await server.start();
  return server;
}
