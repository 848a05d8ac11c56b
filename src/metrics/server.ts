import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, type Registry } from 'prom-client';
import { AgentVpnError } from '../errors.js';
import { ConnectionGuard } from '../net/connection-guard.js';
import { formatHostPort } from '../relay/protocol.js';
import type { MetricsListen } from './listen.js';

/**
 * Renders within this long of the last one are answered with its text: a flood of scrapes costs
 * one collection (a walk over every peer) per window, not one per request. Prometheus scrapes
 * every few seconds or more, so no real scraper sees the reuse.
 */
export const RENDER_REUSE_MS = 500;
/**
 * A render is reused for at least this many times as long as it took: a big fleet (1,000 peers
 * take ~160 ms here) stretches the window, so a flood of scrapes costs at most about a tenth of
 * a core whatever the fleet's size.
 */
export const RENDER_COST_FACTOR = 10;

/** How long renders are reused (tests turn the reuse off to compare). */
export interface RenderReuse {
  minMs: number;
  costFactor: number;
}
/**
 * Open connections at most: a scraper keeps one alive; a few more for curl and a second Prometheus.
 * At the cap the one idle the longest makes room (connection-guard.ts), so silent connections
 * (any local user can open them) cannot keep a scrape out, as a plain cap let 16 of them do.
 */
const MAX_CONNECTIONS = 16;
/**
 * One address holds at most half of them, so it never reaches the total and evicts only its own:
 * churn from one address cannot close a scraper elsewhere that has not sent its request yet.
 */
const MAX_CONNECTIONS_PER_ADDRESS = MAX_CONNECTIONS / 2;
/** A scrape request is one small GET: whoever is slower than this holds a connection for nothing. */
const REQUEST_TIMEOUT_MS = 5_000;
/** How often Node checks the timeouts above (its default, 30 s, would let them hold much longer). */
const CONNECTIONS_CHECK_INTERVAL_MS = 1_000;
/** An idle kept-alive connection is closed after this (longer than a 1 s scrape interval, so Prometheus keeps its one). */
const KEEP_ALIVE_TIMEOUT_MS = 15_000;

export interface MetricsLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** What is answered besides /metrics; bounded label values (the path itself never becomes one). */
type Refusal = 'not-found' | 'method' | 'render-failed';

/**
 * `GET /metrics` in Prometheus's text format, from `registry`, on its own port (never on the
 * registry's or relay's public one). Everything else is a short 404/405.
 */
export class MetricsServer {
  private server: Server | null = null;
  /** The last render: when it finished, how long it took, its text. */
  private last: { at: number; tookMs: number; text: string } | null = null;
  private rendering: Promise<string> | null = null;
  private readonly refused: Counter<'reason'>;

  constructor(
    private readonly registry: Registry,
    private readonly listen: MetricsListen,
    private readonly log: MetricsLog,
    private readonly reuse: RenderReuse = { minMs: RENDER_REUSE_MS, costFactor: RENDER_COST_FACTOR },
  ) {
    this.refused = new Counter({
      name: 'agentvpn_metrics_requests_refused_total', help: 'Requests to the metrics endpoint not answered with metrics, by reason', labelNames: ['reason'], registers: [registry],
    });
  }

  get port(): number {
    return (this.server?.address() as AddressInfo | null)?.port ?? 0;
  }

  get url(): string {
    return `http://${formatHostPort(this.listen.host, this.port)}/metrics`;
  }

  async start(): Promise<void> {
    const server = createServer({
      requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: REQUEST_TIMEOUT_MS, keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
      connectionsCheckingInterval: CONNECTIONS_CHECK_INTERVAL_MS,
    }, (req, res) => this.answer(req, res));
    new ConnectionGuard({ perAddress: MAX_CONNECTIONS_PER_ADDRESS, total: MAX_CONNECTIONS }).attach(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => reject(new AgentVpnError('METRICS_LISTEN_FAILED',
        `cannot serve metrics on ${formatHostPort(this.listen.host, this.listen.port)}: ${e.message}`,
        e.code === 'EADDRINUSE' ? 'another process uses that port: pick another --metrics port' : 'check the --metrics address (an address of this host)')));
      server.listen(this.listen.port, this.listen.host, () => resolve());
    });
    server.on('error', (err) => this.log.warn({ err }, 'metrics server error'));
    this.server = server;
    if (this.listen.loopback) {
      this.log.info({ event: 'metrics-listening', url: this.url }, `metrics on ${this.url}`);
    } else {
      this.log.warn({ event: 'metrics-listening', url: this.url },
        `metrics on ${this.url}, reachable from the network: they show peers, paths and traffic; firewall the port to your Prometheus`);
    }
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
  }

  private answer(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics') return this.refuse(res, 'not-found', 404);
    if (req.method !== 'GET' && req.method !== 'HEAD') return this.refuse(res, 'method', 405);
    this.render().then((text) => {
      res.writeHead(200, { 'content-type': this.registry.contentType, 'content-length': Buffer.byteLength(text) });
      res.end(req.method === 'HEAD' ? undefined : text);
    }, (err: unknown) => {
      this.log.warn({ err }, 'collecting metrics failed');
      this.refuse(res, 'render-failed', 500);
    });
  }

  private refuse(res: ServerResponse, reason: Refusal, status: number): void {
    this.refused.inc({ reason });
    res.writeHead(status, { 'content-type': 'text/plain', 'content-length': 0, connection: 'close' });
    res.end();
  }

  /** The registry's text: one collection in flight at a time, then reused (checked before any collecting). */
  private render(): Promise<string> {
    const last = this.last;
    if (last && performance.now() - last.at < Math.max(this.reuse.minMs, this.reuse.costFactor * last.tookMs)) return Promise.resolve(last.text);
    this.rendering ??= (async () => {
      try {
        const start = performance.now();
        const text = await this.registry.metrics();
        const at = performance.now();
        this.last = { at, tookMs: at - start, text };
        return text;
      } finally {
        this.rendering = null;
      }
    })();
    return this.rendering;
  }
}
