import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import pino, { type Logger } from 'pino';
import { AgentVpnError } from '../errors.js';
import type { KeyStatement } from '../identity/rotation.js';
import { isOverlayPool } from '../ip/overlay-space.js';
import { formatPrefix, parsePrefix, type Prefix } from '../ip/prefix.js';
import type { RelayInfo } from '../relay/protocol.js';
import { advertisedRelays } from './relay-list.js';
import { ConnectionGuard } from '../net/connection-guard.js';
import { guardedServer } from '../net/guarded-server.js';
import { EventHub } from './events.js';
import { ChangePacer } from './change-pacer.js';
import { Entry, Fleet } from './fleet-state.js';
import { sendJson } from './http-body.js';
import {
  STOP_GRACE_MS, defaultLimits, keepAliveTimeoutMs, type RegistryLimits,
} from './limits.js';
import {
  DEFAULT_NETWORK, DEFAULT_OFFLINE_AFTER_MS, DEFAULT_POOL, HEARTBEATS_PER_OFFLINE_PERIOD, SWEEP_INTERVAL_MS, hashToken, type AgentChangeKind,
  type RegistryStats,
} from './protocol.js';
import { AdminTokens, createAdminToken } from './admin-auth.js';
import { createAuditRoutes } from './audit-routes.js';
import { OperatorSync } from './operator-sync.js';
import { NO_REGISTRY_LOG, RegistryLog, registryLogDirOf, type RegistryEvents } from './registry-log.js';
import { validateTags } from './tags.js';
import { NETWORK_PATTERN } from '../net/names.js';
import { REFUSALS } from './refusals.js';
import { LogBudget } from './log-budget.js';
import { createRoutes } from './routes.js';
import { SignatureBudget } from './signature-budget.js';
import { openStore, sqliteFileOf } from './open-store.js';
import { PgChangeFeed } from './pg-change-feed.js';
import { PgStore } from './pg-store.js';
import { DEFAULT_WITNESS_HOST, ephemeralWitnessKey, loadWitnessKey, witnessKeyFileOf } from './witness-key.js';
import { WITNESS_HOST_KEY, type RegistryStore } from './store.js';

/**
 * What a relay run beside the registry gives it. The command composes the two
 * (cli/registry-with-relay.ts); the registry knows the relay only by this. S: the relay's counters.
 */
export interface BuiltInRelay<S = unknown> {
  /**
   * Its entry (first in the advertised list) and its STUN servers, at `host`: the host the joining
   * agent reached the registry at. Null while it is not running.
   */
  advertised(host: string): { relay: RelayInfo; stun: string[] } | null;
  /** Members were removed or blocked: the relay checks its sessions again now, not at its next sweep. */
  membershipChanged(): void;
  /** Its counters, shown as `relay` in /v1/stats, the console and the metrics; null while it is not running. */
  stats(): S | null;
}

/** Where the registry listens unless told: loopback, a free port. */
export const DEFAULT_LISTEN = '127.0.0.1:0';

export interface RegistryOptions<S = unknown> {
  /** "HOST:PORT" ("[::1]:PORT" for IPv6); port 0 picks a free one. Default 127.0.0.1:0. */
  listen?: string;
  /** SQLite database file; or give `store`. */
  db?: string;
  store?: RegistryStore;
  /** The network for requests that name none, and for tokens created without one. */
  network?: string;
  pool?: string;
  tlsCert?: string;
  tlsKey?: string;
  offlineAfterMs?: number;
  /** The relay run beside it (none by default: the registry alone advertises no relay of its own, and no STUN). */
  builtInRelay?: BuiltInRelay<S>;
  /** Standalone relays advertised to agents beside the built-in one (relay-list.ts). */
  relayPeers?: RelayInfo[];
  /** The witness key file (created on first start); default: beside `db`. A registry with neither keeps one in memory. */
  witnessKey?: string;
  /** The host part of the witness's key name (default "registry"). */
  witnessHost?: string;
  /** The registry's own audit log directory; default: `<db>.audit`. A registry with neither keeps no log of its own. */
  auditDir?: string;
  /** Connection and event-stream caps (limits.ts); the defaults follow the process's descriptor limit. */
  limits?: Partial<RegistryLimits>;
  log?: Logger;
  /** Called as each request arrives (metrics: src/metrics/registry.ts counts it when its response closes). */
  requestObserver?: (req: IncomingMessage, res: ServerResponse) => void;
}

export interface RunningRegistry<S = unknown> {
  url: string;
  port: number;
  /** The HTTP(S) server: a relay beside the registry takes its TCP fallback (an HTTP upgrade) from it. */
  httpServer: Server;
  /** The relay beside it accepted a hello on this connection (RelayOptions.onTcpSession): the caps count it as busy for good. */
  holdConnection(socket: Duplex): void;
  /**
   * The networks an agent key joined; null for a stranger, or a key its agent rotated away from.
   * In memory: a relay's allow hook, asked before it checks a hello's signature.
   */
  networksOf(edPub: Uint8Array): string[] | null;
  /** The key that cosigns agents' audit checkpoints: what agents pin. */
  witness: { name: string; publicKey: string };
  stop(): Promise<void>;
  stats(): RegistryStats<S>;
  createToken(opts?: { network?: string; expiresInMs?: number | null; uses?: number | null; tags?: string[] }): Promise<string>;
  /** Creates an admin token (for /v1/admin/*). */
  createAdminToken(): Promise<string>;
}

/**
 * Creates a join token and stores its hash; the token itself is returned once and never kept.
 * Every agent that joins with it gets its `tags`.
 */
export async function createJoinToken(store: RegistryStore, opts: { network: string; expiresInMs?: number | null; uses?: number | null; tags?: string[] }): Promise<string> {
  if (!NETWORK_PATTERN.test(opts.network)) {
    throw new AgentVpnError('BAD_NETWORK', `invalid network name "${opts.network}"`, 'network names are lowercase letters, digits and -, up to 63');
  }
  if (opts.uses != null && !(Number.isSafeInteger(opts.uses) && opts.uses > 0)) {
    throw new AgentVpnError('BAD_USES', `invalid number of uses ${opts.uses}`, 'give --uses a positive whole number, or leave it out for unlimited uses');
  }
  const tags = validateTags(opts.tags ?? []);
  const token = `avt_${randomBytes(32).toString('base64url')}`;
  const now = Date.now();
  await store.addToken({ hash: hashToken(token), network: opts.network, createdAt: now, expiresAt: opts.expiresInMs == null ? null : now + opts.expiresInMs, usesLeft: opts.uses ?? null, tags });
  return token;
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new AgentVpnError('BAD_LISTEN', `invalid listen address "${listen}"`, 'give HOST:PORT, e.g. 0.0.0.0:7443 or [::]:7443');
  }
  return { host: m[1] ?? m[2], port };
}

const WILDCARDS = new Set(['0.0.0.0', '::', '']);

/**
 * The host an agent reached us at, for the relay and STUN addresses it is given: the Host
 * header, else the listen address when it is not a wildcard, else the socket's local address.
 */
function advertisedHost(req: IncomingMessage, listenHost: string): string {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+))(?::\d{1,5})?$/.exec(req.headers.host ?? '');
  if (m) return m[1] ?? m[2];
  if (!WILDCARDS.has(listenHost)) return listenHost;
  return (req.socket.localAddress ?? '127.0.0.1').replace(/^::ffff:(?=\d+\.)/, '');
}

function parsePool(pool: string): Prefix {
  const p = parsePrefix(pool);
  if (!p || p.family !== 4 || p.bits > 30) {
    throw new AgentVpnError('BAD_POOL', `invalid IPv4 pool "${pool}"`, 'give an IPv4 prefix of /30 or larger, e.g. 100.64.0.0/10');
  }
  // Agents refuse a pool of public addresses (they would route it into the tunnel): say so here.
  if (!isOverlayPool(p)) {
    throw new AgentVpnError('BAD_POOL', `IPv4 pool "${pool}" is not inside shared or private address space`,
      'give a pool inside 100.64.0.0/10, 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (default 100.64.0.0/10)');
  }
  return p;
}

/** Starts the registry server; resolves once it is listening. */
export async function startRegistry<S = never>(opts: RegistryOptions<S>): Promise<RunningRegistry<S>> {
  const log = opts.log ?? pino({ level: 'silent' });
  const defaultNetwork = opts.network ?? DEFAULT_NETWORK;
  if (!NETWORK_PATTERN.test(defaultNetwork)) throw new AgentVpnError('BAD_NETWORK', `invalid network name "${defaultNetwork}"`, 'network names are lowercase letters, digits and -, up to 63');
  const pool = parsePool(opts.pool ?? DEFAULT_POOL);
  const offlineAfterMs = opts.offlineAfterMs ?? DEFAULT_OFFLINE_AFTER_MS;
  const heartbeatIntervalMs = Math.max(1, Math.floor(offlineAfterMs / HEARTBEATS_PER_OFFLINE_PERIOD));
  const { host, port } = parseListen(opts.listen ?? DEFAULT_LISTEN);
  if (!opts.store && !opts.db) throw new AgentVpnError('USAGE', 'the registry needs a database', 'pass --db FILE');
  const tls = opts.tlsCert || opts.tlsKey ? loadTls(opts.tlsCert, opts.tlsKey) : null;
  // The advertised relays are checked (unique names, at most 16) before anything is opened.
  const relayPeers = advertisedRelays(null, opts.relayPeers ?? []);
  // A database URL has no directory to keep the witness key and the registry's log beside: give --witness-key and --audit-dir.
  const dbFile = sqliteFileOf(opts.db);
  const witness = opts.witnessKey || dbFile ? loadWitnessKey(opts.witnessKey ?? witnessKeyFileOf(dbFile!), opts.witnessHost) : ephemeralWitnessKey(opts.witnessHost);
  log.info({ event: 'witness-key', name: witness.name, publicKey: witness.publicKey.toString('base64'), file: witness.file || null, created: witness.created },
    witness.file ? `witness key ${witness.name} (${witness.created ? 'created' : 'loaded'}: ${witness.file})` : `witness key ${witness.name} (in memory only)`);
  const store = opts.store ?? await openStore(opts.db!);
  await store.setMeta(WITNESS_HOST_KEY, opts.witnessHost ?? DEFAULT_WITNESS_HOST);

  const limits = { ...defaultLimits(), ...opts.limits };
  const fleet = new Fleet();
  const networks = fleet.networks;
  const started = Date.now();
  for (const m of await store.members()) fleet.net(m.network).setMember(m);
  for (const c of await store.keyChains()) fleet.setRotated(c.id, Buffer.from(c.key, 'base64'), c.chain as KeyStatement[]);
  for (const r of await store.records()) {
    const online = r.online && started - r.lastSeen <= offlineAfterMs;
    const state = fleet.net(r.network);
    const entry = new Entry({
      record: r.signed.record, signature: r.signed.signature, online, lastSeen: r.lastSeen, tags: state.members.get(r.id)?.tags, chain: fleet.rotated.get(r.id)?.chain,
    });
    entry.dirty = online !== r.online;
    state.setAgent(r.id, entry);
  }

  const hub = new EventHub(limits);
  const admins = new AdminTokens(store);
  const auditDir = opts.auditDir ?? (dbFile ? registryLogDirOf(dbFile) : null);
  if (!auditDir) log.warn({ event: 'no-registry-log' }, 'the registry keeps no audit log of its own (no --db or --audit-dir)');
  let registryLog: RegistryEvents;
  try {
    registryLog = auditDir ? await RegistryLog.open({ dir: auditDir, witness, store, log }) : NO_REGISTRY_LOG;
  } catch (e) {
    if (!opts.store) await store.close();
    throw e;
  }
  const sync = new OperatorSync(store, fleet, hub, admins, log, () => opts.builtInRelay?.membershipChanged(), registryLog);
  await sync.start();
  /** Admin requests: the token checked, its first use and failures written to the registry's log. */
  const authorizeAdmin = async (req: IncomingMessage): Promise<void> => {
    let hash: string;
    try {
      hash = admins.authorize(req);
    } catch (e) {
      // A refusal by the budget (RATE_LIMITED) checked no token: only a token that failed is a failed login.
      if ((e as AgentVpnError).code === 'UNAUTHORIZED') await registryLog.adminAuthFailed(req);
      throw e;
    }
    await registryLog.adminLogin(hash, req);
  };
  const guard = new ConnectionGuard({ perAddress: limits.connectionsPerAddress, total: limits.connections });
  const counters = { requests: 0, refused: {} as Record<string, number> };

  /** Several instances on one PostgreSQL database follow each other's changes (pg-change-feed.ts); set once listening. */
  let feed: PgChangeFeed | null = null;

  // A held change goes out as the agent's view at that time, unless it was removed meanwhile.
  const pacer = new ChangePacer((network, id, kind) => {
    const entry = networks.get(network)?.agents.get(id);
    if (entry) hub.publish(network, kind, entry);
  });
  const emit = (network: string, kind: AgentChangeKind, entry: Entry, id: string) => {
    log.info({ network, id, name: entry.view.record.name, event: kind }, `agent ${kind}`);
    pacer.offer(network, id, kind);
  };

  const stats = (): RegistryStats<S> => {
    let agents = 0;
    let online = 0;
    for (const s of networks.values()) {
      for (const e of s.agents.values()) {
        agents++;
        if (e.view.online) online++;
      }
    }
    return {
      agents, online, refused: { ...counters.refused }, requests: counters.requests, connections: guard.stats(), streams: { ...hub.stats(), paced: pacer.paced }, relay: opts.builtInRelay?.stats() ?? null,
      audit: audit.stats(), changeFeed: feed?.stats() ?? null,
    };
  };

  /** The relay and STUN servers a joining agent is told about, at the host it reached us at. */
  const relayInfo = (req: IncomingMessage): { relays: RelayInfo[]; stun: string[] } => {
    const builtIn = opts.builtInRelay?.advertised(advertisedHost(req, host));
    return builtIn ? { relays: [builtIn.relay, ...relayPeers], stun: builtIn.stun } : { relays: relayPeers, stun: [] };
  };

  const signatures = new SignatureBudget();
  const audit = createAuditRoutes({
    store, fleet, witness, signatures, defaultNetwork, log, authorizeAdmin, refusalKept: (r, skipped) => registryLog.refused(r, skipped),
  });
  const route = createRoutes({
    store, fleet, hub, signatures, log, defaultNetwork, pool, heartbeatIntervalMs, offlineAfterMs, relayInfo, emit, stats,
    admin: { store, authorize: authorizeAdmin, sync }, audit, events: registryLog,
  });

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    counters.requests++;
    opts.requestObserver?.(req, res);
    route(req, res).catch((e: unknown) => refused(req, res, e));
  };

  const refusalLog = new LogBudget((skipped) => log.warn({ event: 'refusals-not-logged', skipped }, `${skipped} refused requests were not logged (too many in one second; see /v1/stats)`));

  /** Answers a refusal (or an internal error) and counts it; never throws. */
  const refused = (req: IncomingMessage, res: ServerResponse, e: unknown) => {
    try {
      const err = e instanceof AgentVpnError && REFUSALS[e.code] ? e : new AgentVpnError('INTERNAL', 'internal error', REFUSALS.INTERNAL.hint);
      counters.refused[err.code] = (counters.refused[err.code] ?? 0) + 1;
      if (refusalLog.allow()) {
        if (err.code === 'INTERNAL') log.error({ err: e, method: req.method, url: req.url?.slice(0, 200) }, 'request failed');
        else log.info({ code: err.code, method: req.method, url: req.url?.slice(0, 200), remote: req.socket?.remoteAddress, detail: err.message }, 'request refused');
      }
      if (res.headersSent || res.destroyed) return void res.destroy();
      // A body we did not read in full is not drained: close the connection after answering.
      if (!req.complete) res.setHeader('connection', 'close');
      sendJson(res, REFUSALS[err.code].status, err.toJSON());
    } catch (bug) {
      log.error({ err: bug }, 'answering a refusal failed');
      res.destroy();
    }
  };

  const server = guardedServer(tls, keepAliveTimeoutMs(heartbeatIntervalMs), guard, onRequest);

  /** The networks an agent key joined (RunningRegistry.networksOf). */
  const networksOf = (edPub: Uint8Array): string[] | null => {
    const id = fleet.agentOfKey(edPub);
    if (id === null) return null;
    const joined: string[] = [];
    for (const [name, s] of networks) if (s.members.has(id)) joined.push(name);
    return joined.length > 0 ? joined : null;
  };

  // Requests that never became one: too slow (headersTimeout, requestTimeout), headers too large, not HTTP.
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    const [code, status] = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? ['REQUEST_TIMEOUT', '408 Request Timeout']
      : err.code === 'HPE_HEADER_OVERFLOW' ? ['HEADERS_TOO_LARGE', '431 Request Header Fields Too Large'] : ['BAD_REQUEST', '400 Bad Request'];
    counters.refused[code] = (counters.refused[code] ?? 0) + 1;
    if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
    else socket.destroy();
  });

  const flush = async () => {
    const updates: Array<{ network: string; id: string; lastSeen: number; online: boolean }> = [];
    for (const [network, s] of networks) {
      for (const [id, e] of s.agents) {
        if (!e.dirty) continue;
        e.dirty = false;
        updates.push({ network, id, lastSeen: e.view.lastSeen, online: e.view.online });
      }
    }
    if (updates.length) await store.setLiveness(updates);
  };

  const sweep = () => {
    const now = Date.now();
    for (const [network, s] of networks) {
      for (const [id, e] of s.agents) {
        if (e.view.online && (now - e.view.lastSeen > offlineAfterMs || e.view.record.expiresAt <= now)) {
          e.setLiveness(false, e.view.lastSeen);
          emit(network, 'offline', e, id);
        }
      }
    }
    flush().catch((err: unknown) => log.error({ err }, 'saving agent liveness failed'));
    // Removals, blocks and policies an operator made with the CLI on the database.
    void sync.poll();
  };

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new AgentVpnError('LISTEN_FAILED', `cannot listen on ${host}:${port}: ${e.message}`,
      e.code === 'EADDRINUSE' ? 'another process uses that port: pick another --listen port' : 'check the --listen address')));
    server.listen(port, host, () => resolve());
  }).catch(async (e) => {
    await registryLog.close();
    if (!opts.store) await store.close();
    throw e;
  });
  const bound = (server.address() as AddressInfo).port;
  feed = store instanceof PgStore ? new PgChangeFeed({ store, fleet, sync, log, emit }) : null;
  await feed?.start().catch(async (e: unknown) => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await registryLog.close();
    if (!opts.store) await store.close();
    throw e;
  });
  hub.start();
  const sweeper = setInterval(sweep, SWEEP_INTERVAL_MS);
  const url = `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${bound}`;
  log.info({ url, network: defaultNetwork, pool: formatPrefix(pool), offlineAfterMs, event: 'listening' }, 'registry listening');

  let stopping: Promise<void> | undefined;
  return {
    url,
    port: bound,
    stats,
    createToken: async (o = {}) => {
      const token = await createJoinToken(store, { network: o.network ?? defaultNetwork, expiresInMs: o.expiresInMs, uses: o.uses, tags: o.tags });
      await sync.poll(); // in the registry's log before it is handed out
      return token;
    },
    createAdminToken: async () => {
      const token = await createAdminToken(store);
      await sync.poll();
      return token;
    },
    httpServer: server,
    holdConnection: (socket) => guard.hold(socket),
    networksOf,
    witness: { name: witness.name, publicKey: witness.publicKey.toString('base64') },
    stop: () => (stopping ??= (async () => {
      clearInterval(sweeper);
      await feed?.stop();
      await sync.poll();
      hub.stop();
      pacer.stop();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      // Every connection was just closed; never let a stuck one hold the shutdown.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(() => {
        log.warn({ event: 'stop-timeout' }, 'some connections did not close; stopping anyway');
        resolve();
      }, STOP_GRACE_MS)))]);
      clearTimeout(timer);
      await flush().catch((err: unknown) => log.error({ err }, 'saving agent liveness failed'));
      await registryLog.close().catch((err: unknown) => log.error({ err }, 'closing the registry audit log failed'));
      if (!opts.store) await store.close();
      log.info({ event: 'stopped' }, 'registry stopped');
    })()),
  };
}

function loadTls(certFile?: string, keyFile?: string): { cert: Buffer; key: Buffer } {
  if (!certFile || !keyFile) throw new AgentVpnError('USAGE', 'TLS needs both a certificate and a key', 'pass both --tls-cert and --tls-key');
  try {
    return { cert: readFileSync(certFile), key: readFileSync(keyFile) };
  } catch (e) {
    throw new AgentVpnError('TLS_FILES', `cannot read TLS certificate or key: ${(e as Error).message}`, 'check the --tls-cert and --tls-key paths and their permissions', { cause: e });
  }
}
