import type { IncomingMessage, ServerResponse } from 'node:http';
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RegistryStats } from '../registry/protocol.js';
import type { RelayStats } from '../relay/server.js';
import { scrapedCounter, scrapedGauge, sharedReading } from './collect.js';
import { parseMetricsListen } from './listen.js';
import { registerConnectionMetrics } from './connections.js';
import { registerRelayMetrics } from './relay.js';
import { methodLabel, routeTemplate, statusLabel } from './registry-routes.js';
import { MetricsServer, type MetricsLog } from './server.js';

/** Registry answers take from well under a millisecond (a lookup) to tens (a signed write to SQLite). */
const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** An event stream lasts as long as its subscriber: its "duration" is no latency, so it stays out of the histogram. */
const STREAM_ROUTE = '/v1/events';

type RequestLabel = 'route' | 'method' | 'status';

/** The stats of a running registry, with the built-in relay beside it or alone (cli/registry-with-relay.ts). */
type Stats = RegistryStats<RelayStats>;
type StatsSource = { stats(): Stats };

/**
 * The registry's metrics: requests by route template, method and status with a latency histogram
 * (counted when each response closes), and at scrape time its agents, online agents, event-stream
 * subscribers, connections, refusals and the built-in relay's counters. Labels take bounded
 * values only (registry-routes.ts): no request can add a series.
 */
export class RegistryMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<RequestLabel>;
  private readonly duration: Histogram<'route' | 'method'>;
  private running: StatsSource | null = null;

  constructor() {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'agentvpn_registry_http_requests_total', help: 'HTTP requests answered, by route template, method and status', labelNames: ['route', 'method', 'status'], registers });
    this.duration = new Histogram({
      name: 'agentvpn_registry_http_request_duration_seconds', help: 'Time from a request\'s arrival until its answer was sent (event streams excluded)',
      labelNames: ['route', 'method'], buckets: DURATION_BUCKETS, registers,
    });
    const read = sharedReading((): Stats | null => this.running?.stats() ?? null);
    // `value` undefined: no series (a registry without that part, e.g. no change feed on SQLite).
    const fillWith = (value: (s: Stats) => number | undefined) => (emit: (labels: Record<string, never>, v: number) => void) => {
      const s = read();
      const v = s ? value(s) : undefined;
      if (v !== undefined) emit({}, v);
    };
    const gauge = (name: string, help: string, value: (s: Stats) => number | undefined) => scrapedGauge(this.registry, { name, help, fill: fillWith(value) });
    const counter = (name: string, help: string, value: (s: Stats) => number | undefined) => scrapedCounter(this.registry, { name, help, fill: fillWith(value) });
    gauge('agentvpn_registry_agents', 'Agents with a published record, in all networks', (s) => s.agents);
    gauge('agentvpn_registry_agents_online', 'Agents heard from within the offline period', (s) => s.online);
    gauge('agentvpn_registry_event_subscribers', 'Event streams open now', (s) => s.streams.open);
    counter('agentvpn_registry_event_streams_refused_total', 'Event streams refused past a cap', (s) => s.streams.refused);
    gauge('agentvpn_registry_event_subscribers_behind', 'Event streams whose changes wait for a catch-up pass (slow readers)', (s) => s.streams.behind);
    counter('agentvpn_registry_event_streams_dropped_total', 'Event streams dropped: stalled, or too many removals waiting', (s) => s.streams.dropped);
    counter('agentvpn_registry_event_streams_resumed_total', 'Event streams resumed from a reader\'s Last-Event-ID (no snapshot)', (s) => s.streams.resumed);
    counter('agentvpn_registry_event_catch_up_views_total', 'Agent views sent by catch-up passes instead of queued changes', (s) => s.streams.caughtUp);
    counter('agentvpn_registry_event_changes_paced_total', 'Agent changes held back past the agent\'s change budget (its latest view goes out later)', (s) => s.streams.paced);
    registerConnectionMetrics(this.registry, { open: 'agentvpn_registry_connections', closed: 'agentvpn_registry_connections_refused_total', what: 'The registry' },
      () => read()?.connections ?? null);
    scrapedCounter(this.registry, {
      name: 'agentvpn_registry_refused_total', help: 'Requests refused, by error code (src/registry/refusals.ts)', labelNames: ['code'],
      fill: (emit) => Object.entries(read()?.refused ?? {}).forEach(([code, v]) => emit({ code }, v)),
    });
    // The change feed exists on PostgreSQL only: no series at all on SQLite (a 0 would read as "down").
    gauge('agentvpn_registry_change_feed_connected', 'On PostgreSQL: 1 while the change feed listens, 0 while it reconnects',
      (s) => (s.changeFeed ? Number(s.changeFeed.connected) : undefined));
    scrapedCounter(this.registry, {
      name: 'agentvpn_registry_change_feed_notifications_total', labelNames: ['result'],
      help: 'On PostgreSQL: change notifications received, by result (own: skipped; applied; forged: bad MAC, dropped; unauthenticated: no MAC; malformed)',
      fill: (emit) => {
        const f = read()?.changeFeed;
        if (!f) return;
        for (const result of ['own', 'applied', 'forged', 'unauthenticated', 'malformed'] as const) emit({ result }, f[result]);
      },
    });
    counter('agentvpn_registry_change_feed_reconnects_total', 'On PostgreSQL: times the change feed lost its LISTEN connection and came back (each re-reads the fleet)',
      (s) => s.changeFeed?.reconnects);
    gauge('agentvpn_registry_relay_sessions', 'Agents registered with the built-in relay now', (s) => s.relay?.clients ?? 0);
    registerRelayMetrics(this.registry, () => read()?.relay ?? null);
    collectDefaultMetrics({ register: this.registry });
  }

  /** For startRegistry's `requestObserver`: counts the request and its latency when its response closes. */
  readonly observe = (req: IncomingMessage, res: ServerResponse): void => {
    const start = performance.now();
    res.once('close', () => {
      const route = routeTemplate(req.url);
      const method = methodLabel(req.method);
      // A response destroyed before its head was sent (a refusal that could not be answered) has no status.
      this.requests.inc({ route, method, status: res.headersSent ? statusLabel(res.statusCode) : 'none' });
      if (route !== STREAM_ROUTE) this.duration.observe({ route, method }, (performance.now() - start) / 1000);
    });
  };

  /** The running registry whose stats the scrape-time metrics read. */
  watch(running: StatsSource): void {
    this.running = running;
  }

  /** Serves these metrics on `listen` (`--metrics [HOST:]PORT`). */
  async serve(listen: string, log: MetricsLog): Promise<MetricsServer> {
    const server = new MetricsServer(this.registry, parseMetricsListen(listen), log);
    await server.start();
    return server;
  }
}
