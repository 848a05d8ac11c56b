import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import pino, { type Logger } from 'pino';
import { AgentVpnError } from '../errors.js';
import { agentIdOf, publicKeyOfAgentId } from '../identity/agent-id.js';
import { networkUlaPrefix, overlayIPv6 } from '../identity/addresses.js';
import { formatAddress, formatPrefix, parsePrefix, type Prefix } from '../ip/prefix.js';
import { formatHostPort, type RelayInfo } from '../relay/protocol.js';
import { startRelay, type RelayLimits, type RunningRelay } from '../relay/server.js';
import { UPGRADE_PATH } from '../relay/tcp.js';
import { capabilityMatches, parseCapability, type Capability } from './capabilities.js';
import { EventHub } from './events.js';
import {
  DEFAULT_NETWORK, DEFAULT_OFFLINE_AFTER_MS, DEFAULT_POOL, HEADERS_TIMEOUT_MS, HEARTBEATS_PER_OFFLINE_PERIOD, HEARTBEAT_LABEL, LEAVE_LABEL,
  MAX_BODY_BYTES, MAX_CLOCK_SKEW_MS, REQUEST_TIMEOUT_MS, STOP_GRACE_MS, SWEEP_INTERVAL_MS, hashToken, joinMessage, parseAuthorization, requestMessage,
  timestampMessage, verifyAgentSignature, type AgentView, type ChangeKind, type JoinResult, type RegistryStats,
} from './protocol.js';
import { NAME_PATTERN, NETWORK_PATTERN, verifyRecord, type SignedRecord } from './record.js';
import { SqliteStore } from './sqlite-store.js';
import type { Member, RegistryStore } from './store.js';

/** HTTP status and the hint sent with every refusal code. */
const REFUSALS: Record<string, { status: number; hint: string }> = {
  BAD_REQUEST: { status: 400, hint: 'send a JSON body with the fields the registry API documents' },
  PAYLOAD_TOO_LARGE: { status: 413, hint: `request bodies are limited to ${MAX_BODY_BYTES / 1024} KiB` },
  UNAUTHORIZED: { status: 401, hint: 'sign the request as a joined agent (Authorization: AgentVPN ...) or send a join token of the network (Authorization: Bearer ...)' },
  BAD_TOKEN: { status: 403, hint: 'a new agent needs a valid join token: create one with `agentvpn registry token create` and pass it with --token' },
  BAD_SIGNATURE: { status: 403, hint: "the request must be signed by the key encoded in the agent ID; check the agent's identity key" },
  KEY_MISMATCH: { status: 403, hint: "the record's WireGuard key and IPv6 address must be the ones derived from the agent's key" },
  MALFORMED_RECORD: { status: 400, hint: 'publish a complete agent record in canonical form' },
  EXPIRED_RECORD: { status: 400, hint: 'sign a fresh record with a future expiresAt' },
  WRONG_NETWORK: { status: 400, hint: 'publish the record to the network it names' },
  CLOCK_SKEW: { status: 400, hint: `timestamps must be within ${MAX_CLOCK_SKEW_MS / 60_000} minutes of the registry's clock and newer than the last one used: synchronise the host clock (NTP)` },
  NOT_JOINED: { status: 403, hint: 'join the network first (POST /v1/join)' },
  NAME_TAKEN: { status: 409, hint: 'names are unique per network: choose another --name' },
  STALE_RECORD: { status: 409, hint: 'publish a record with a higher seq than the last one' },
  ADDRESS_MISMATCH: { status: 409, hint: 'use the IPv4 address the registry allocated at join' },
  NOT_FOUND: { status: 404, hint: 'check the path, the agent ID or name, and the network' },
  METHOD_NOT_ALLOWED: { status: 405, hint: 'check the HTTP method for this path' },
  POOL_EXHAUSTED: { status: 503, hint: 'the network has used every address of its IPv4 pool; start the registry with a larger --pool' },
  INTERNAL: { status: 500, hint: 'this is a bug in the agentvpn registry; see its log' },
};

function refuse(code: string, message: string): never {
  throw new AgentVpnError(code, message, REFUSALS[code]?.hint ?? REFUSALS.INTERNAL.hint);
}

export interface RegistryOptions {
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
  /**
   * Run the built-in relay and STUN (default true): UDP on the HTTP port number (STUN also on
   * the next port), the relay's TCP fallback on the HTTP server. Only members may use the relay.
   */
  relay?: boolean;
  relayLimits?: RelayLimits;
  log?: Logger;
}

export interface RunningRegistry {
  url: string;
  port: number;
  /** The built-in relay, or null with `relay: false`. */
  relay: RunningRelay | null;
  stop(): Promise<void>;
  stats(): RegistryStats;
  createToken(opts?: { network?: string; expiresInMs?: number | null; uses?: number | null }): Promise<string>;
}

/** Creates a join token and stores its hash; the token itself is returned once and never kept. */
export async function createJoinToken(store: RegistryStore, opts: { network: string; expiresInMs?: number | null; uses?: number | null }): Promise<string> {
  if (!NETWORK_PATTERN.test(opts.network)) {
    throw new AgentVpnError('BAD_NETWORK', `invalid network name "${opts.network}"`, 'network names are lowercase letters, digits and -, up to 63');
  }
  if (opts.uses != null && !(Number.isSafeInteger(opts.uses) && opts.uses > 0)) {
    throw new AgentVpnError('BAD_USES', `invalid number of uses ${opts.uses}`, 'give --uses a positive whole number, or leave it out for unlimited uses');
  }
  const token = `avt_${randomBytes(32).toString('base64url')}`;
  const now = Date.now();
  await store.addToken({ hash: hashToken(token), network: opts.network, createdAt: now, expiresAt: opts.expiresInMs == null ? null : now + opts.expiresInMs, usesLeft: opts.uses ?? null });
  return token;
}

function parseListen(listen: string): { host: string; port: number } {
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
  return p;
}

/** One agent as the registry serves it: capabilities parsed once for filtering, JSON encoded once per change. */
class Entry {
  readonly caps: Capability[];
  /** Liveness changed since it was last written to the store. */
  dirty = false;
  private encoded: string | undefined;

  constructor(private current: AgentView) {
    this.caps = parseCaps(current.record.capabilities);
  }

  get view(): AgentView {
    return this.current;
  }

  setLiveness(online: boolean, lastSeen: number): void {
    this.current = { ...this.current, online, lastSeen };
    this.encoded = undefined;
    this.dirty = true;
  }

  get json(): string {
    return (this.encoded ??= JSON.stringify(this.current));
  }
}

class NetworkState {
  readonly members = new Map<string, Member>();
  readonly byName = new Map<string, string>();
  readonly agents = new Map<string, Entry>();
  /** Capability name → IDs of the agents that have it, so a filtered list does not scan every agent. */
  private readonly byCap = new Map<string, Set<string>>();

  setAgent(id: string, entry: Entry): void {
    for (const c of this.agents.get(id)?.caps ?? []) this.byCap.get(c.name)?.delete(id);
    this.agents.set(id, entry);
    for (const c of entry.caps) {
      let ids = this.byCap.get(c.name);
      if (!ids) this.byCap.set(c.name, (ids = new Set()));
      ids.add(id);
    }
  }

  /** The agents a capability query can match (all of them without a query). */
  *candidates(cap: Capability | null): Iterable<Entry> {
    if (!cap) {
      yield* this.agents.values();
      return;
    }
    for (const id of this.byCap.get(cap.name) ?? []) yield this.agents.get(id)!;
  }

  setMember(m: Member): void {
    const old = this.members.get(m.id);
    if (old && old.name !== m.name && this.byName.get(old.name) === m.id) this.byName.delete(old.name);
    this.members.set(m.id, m);
    this.byName.set(m.name, m.id);
  }
}

function parseCaps(caps: readonly string[]): Capability[] {
  const out: Capability[] = [];
  for (const c of caps) {
    try {
      out.push(parseCapability(c));
    } catch {
      // verifyRecord admits only canonical capabilities; skip anything else defensively.
    }
  }
  return out;
}

type Body = Record<string, unknown>;

/**
 * Reads a body of at most MAX_BODY_BYTES. Past the limit it refuses at once and discards the
 * rest (not destroying the request, so the 413 answer still reaches the client).
 */
function readBody(req: IncomingMessage): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (declared > MAX_BODY_BYTES) refuse('PAYLOAD_TOO_LARGE', `request body of ${declared} bytes is over the ${MAX_BODY_BYTES}-byte limit`);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    req.on('data', (chunk: Buffer) => {
      if (total > MAX_BODY_BYTES) return;
      total += chunk.length;
      if (total > MAX_BODY_BYTES) reject(new AgentVpnError('PAYLOAD_TOO_LARGE', `request body is over the ${MAX_BODY_BYTES}-byte limit`, REFUSALS.PAYLOAD_TOO_LARGE.hint));
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    const cutOff = () => reject(new AgentVpnError('BAD_REQUEST', 'the request body was cut off', REFUSALS.BAD_REQUEST.hint));
    req.on('error', cutOff);
    req.on('close', () => !req.complete && cutOff());
  });
}

/** Reads a JSON object body. */
async function readJson(req: IncomingMessage): Promise<Body> {
  const raw = await readBody(req);
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch {
    refuse('BAD_REQUEST', 'request body is not valid JSON');
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) refuse('BAD_REQUEST', 'request body must be a JSON object');
  return body as Body;
}

function field<T>(ok: boolean, value: unknown, what: string): T {
  if (!ok) refuse('BAD_REQUEST', `missing or invalid ${what}`);
  return value as T;
}

const isTimestamp = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isAgentId = (v: unknown): v is string => typeof v === 'string' && publicKeyOfAgentId(v) !== null;

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  sendText(res, status, JSON.stringify(body));
}

/** Sends JSON text as is (lists are assembled from each agent's cached JSON). */
function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

/** Starts the registry server; resolves once it is listening. */
export async function startRegistry(opts: RegistryOptions): Promise<RunningRegistry> {
  const log = opts.log ?? pino({ level: 'silent' });
  const defaultNetwork = opts.network ?? DEFAULT_NETWORK;
  if (!NETWORK_PATTERN.test(defaultNetwork)) throw new AgentVpnError('BAD_NETWORK', `invalid network name "${defaultNetwork}"`, 'network names are lowercase letters, digits and -, up to 63');
  const pool = parsePool(opts.pool ?? DEFAULT_POOL);
  const offlineAfterMs = opts.offlineAfterMs ?? DEFAULT_OFFLINE_AFTER_MS;
  const heartbeatIntervalMs = Math.max(1, Math.floor(offlineAfterMs / HEARTBEATS_PER_OFFLINE_PERIOD));
  const { host, port } = parseListen(opts.listen ?? '127.0.0.1:0');
  if (!opts.store && !opts.db) throw new AgentVpnError('USAGE', 'the registry needs a database', 'pass --db FILE');
  const tls = opts.tlsCert || opts.tlsKey ? loadTls(opts.tlsCert, opts.tlsKey) : null;
  const store = opts.store ?? new SqliteStore(opts.db!);

  const networks = new Map<string, NetworkState>();
  const net = (name: string): NetworkState => {
    let s = networks.get(name);
    if (!s) networks.set(name, (s = new NetworkState()));
    return s;
  };
  const started = Date.now();
  for (const m of await store.members()) net(m.network).setMember(m);
  for (const r of await store.records()) {
    const online = r.online && started - r.lastSeen <= offlineAfterMs;
    const entry = new Entry({ record: r.signed.record, signature: r.signed.signature, online, lastSeen: r.lastSeen });
    entry.dirty = online !== r.online;
    net(r.network).setAgent(r.id, entry);
  }

  const hub = new EventHub();
  const counters = { requests: 0, refused: {} as Record<string, number> };
  /** Newest signed timestamp used per agent for join/heartbeat/leave, so a captured one cannot be replayed. */
  const lastSigned = new Map<string, number>();

  const emit = (network: string, kind: ChangeKind, entry: Entry, id: string) => {
    log.info({ network, id, name: entry.view.record.name, event: kind }, `agent ${kind}`);
    hub.publish(network, kind, entry.json);
  };

  const checkFresh = (id: string, timestamp: number, now: number, monotonic: boolean) => {
    if (Math.abs(now - timestamp) > MAX_CLOCK_SKEW_MS) refuse('CLOCK_SKEW', `timestamp is ${Math.round((timestamp - now) / 1000)} s from the registry's clock`);
    if (monotonic && timestamp <= (lastSigned.get(id) ?? -1)) refuse('CLOCK_SKEW', 'timestamp is not newer than the last one this agent used (a replayed request?)');
  };

  const networkParam = (url: URL): string => {
    const network = url.searchParams.get('network') ?? defaultNetwork;
    if (!NETWORK_PATTERN.test(network)) refuse('BAD_REQUEST', 'invalid network name');
    return network;
  };

  /** Reads are for the network's agents (signed request) and its token holders (operators). */
  const authorize = async (req: IncomingMessage, network: string, now: number): Promise<void> => {
    const auth = parseAuthorization(req.headers.authorization);
    if (!auth) refuse('UNAUTHORIZED', 'missing or malformed Authorization header');
    if (auth.kind === 'bearer') {
      if (!(await store.tokenValid(network, hashToken(auth.token), now))) refuse('UNAUTHORIZED', `the bearer token is not a valid join token of network ${network}`);
      return;
    }
    if (!isAgentId(auth.id)) refuse('UNAUTHORIZED', 'Authorization names an invalid agent ID');
    checkFresh(auth.id, auth.timestamp, now, false);
    if (!verifyAgentSignature(auth.id, requestMessage(req.method ?? '', req.url ?? '', auth.timestamp), auth.signature)) {
      refuse('UNAUTHORIZED', 'the request signature does not verify');
    }
    if (!networks.get(network)?.members.has(auth.id)) refuse('NOT_JOINED', `agent ${auth.id} has not joined network ${network}`);
  };

  const join = async (req: IncomingMessage, res: ServerResponse, now: number) => {
    const b = await readJson(req);
    const network = field<string>(typeof b.network === 'string' && NETWORK_PATTERN.test(b.network), b.network, 'network');
    const id = field<string>(isAgentId(b.id), b.id, 'id (an agent ID)');
    const name = field<string>(typeof b.name === 'string' && NAME_PATTERN.test(b.name), b.name, 'name (lowercase letters, digits and -, up to 63)');
    const timestamp = field<number>(isTimestamp(b.timestamp), b.timestamp, 'timestamp');
    const token = field<string | undefined>(b.token === undefined || (typeof b.token === 'string' && b.token.length <= 256), b.token, 'token');
    checkFresh(id, timestamp, now, false);
    if (!verifyAgentSignature(id, joinMessage(network, id, name, timestamp), b.signature)) refuse('BAD_SIGNATURE', 'join signature does not verify with the key in the agent ID');
    checkFresh(id, timestamp, now, true);
    const result = await store.admit({ network, id, name, tokenHash: token === undefined ? null : hashToken(token), pool, now });
    if (!result.ok) refuse(result.code, result.message);
    lastSigned.set(id, timestamp);
    net(network).setMember(result.member);
    log.info({ network, id, name, ipv4: result.member.ipv4, event: 'join', created: result.created }, 'agent joined');
    const key = publicKeyOfAgentId(id)!;
    const answer: JoinResult = {
      network, ipv4: result.member.ipv4, ipv6: formatAddress(overlayIPv6(network, key)), ulaPrefix: formatPrefix(networkUlaPrefix(network)),
      pool: formatPrefix(pool), heartbeatIntervalMs, offlineAfterMs, ...relayInfo(req),
    };
    sendJson(res, 200, { ok: true, ...answer });
  };

  const publish = async (req: IncomingMessage, res: ServerResponse, url: URL, id: string, now: number) => {
    const network = networkParam(url);
    const signed = (await readJson(req)) as unknown as SignedRecord;
    const check = verifyRecord(signed, { network, now });
    if (!check.ok) refuse(check.problem!, check.detail ?? check.problem!);
    if (signed.record.id !== id) refuse('BAD_REQUEST', 'the record ID differs from the agent ID in the path');
    const result = await store.putRecord(network, signed, now);
    if (!result.ok) refuse(result.code, result.message);
    const state = net(network);
    state.setMember(result.member);
    const old = state.agents.get(id);
    // Concurrent publishes may finish out of order: the store took the newest, keep that one.
    if (!old || old.view.record.seq < signed.record.seq) {
      const entry = new Entry({ record: signed.record, signature: signed.signature, online: true, lastSeen: now });
      state.setAgent(id, entry);
      emit(network, 'upsert', entry, id);
    }
    sendJson(res, 200, { ok: true });
  };

  /** Heartbeat (online) and leave (offline): a signed timestamp from the agent itself. */
  const liveness = async (req: IncomingMessage, res: ServerResponse, url: URL, id: string, now: number, online: boolean) => {
    const network = networkParam(url);
    if (!isAgentId(id)) refuse('BAD_REQUEST', 'invalid agent ID in the path');
    const b = await readJson(req);
    const timestamp = field<number>(isTimestamp(b.timestamp), b.timestamp, 'timestamp');
    checkFresh(id, timestamp, now, false);
    if (!verifyAgentSignature(id, timestampMessage(online ? HEARTBEAT_LABEL : LEAVE_LABEL, id, timestamp), b.signature)) {
      refuse('BAD_SIGNATURE', 'signature does not verify with the key in the agent ID');
    }
    checkFresh(id, timestamp, now, true);
    const state = networks.get(network);
    if (!state?.members.has(id)) refuse('NOT_JOINED', `agent ${id} has not joined network ${network}`);
    const entry = state.agents.get(id);
    if (!entry) refuse('NOT_FOUND', `agent ${id} has not published a record yet`);
    if (online && entry.view.record.expiresAt <= now) refuse('EXPIRED_RECORD', `the record of agent ${id} has expired: publish a fresh one`);
    lastSigned.set(id, timestamp);
    const changed = entry.view.online !== online;
    entry.setLiveness(online, online ? now : entry.view.lastSeen);
    if (changed) emit(network, online ? 'online' : 'offline', entry, id);
    sendJson(res, 200, { ok: true });
  };

  const listAgents = (url: URL, network: string): Entry[] => {
    const capText = url.searchParams.get('cap');
    let cap: Capability | null = null;
    if (capText !== null) {
      try {
        cap = parseCapability(capText);
      } catch (e) {
        refuse('BAD_REQUEST', (e as Error).message);
      }
    }
    const name = url.searchParams.get('name');
    const onlineText = url.searchParams.get('online');
    if (onlineText !== null && !['1', '0', 'true', 'false'].includes(onlineText)) refuse('BAD_REQUEST', 'online must be 1 or 0');
    const online = onlineText === null ? null : onlineText === '1' || onlineText === 'true';
    const state = networks.get(network);
    const out: Entry[] = [];
    for (const e of state?.candidates(cap) ?? []) {
      if (online !== null && e.view.online !== online) continue;
      // The name's current holder: a record signed before its agent renamed still carries the old name.
      if (name !== null && state!.byName.get(name) !== e.view.record.id) continue;
      if (cap && !e.caps.some((c) => capabilityMatches(cap, c))) continue;
      out.push(e);
    }
    return out;
  };

  const getAgent = (network: string, idOrName: string): Entry => {
    const state = networks.get(network);
    const id = state?.agents.has(idOrName) ? idOrName : state?.byName.get(idOrName);
    const entry = id === undefined ? undefined : state?.agents.get(id);
    if (!entry) refuse('NOT_FOUND', `no agent "${idOrName.slice(0, 80)}" in network ${network}`);
    return entry;
  };

  const stats = (): RegistryStats => {
    let agents = 0;
    let online = 0;
    for (const s of networks.values()) {
      for (const e of s.agents.values()) {
        agents++;
        if (e.view.online) online++;
      }
    }
    return { agents, online, refused: { ...counters.refused }, requests: counters.requests };
  };

  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const now = Date.now();
    let url: URL;
    try {
      url = new URL(req.url ?? '', 'http://registry');
    } catch {
      refuse('BAD_REQUEST', 'invalid request URL');
    }
    const method = req.method ?? '';
    let parts: string[];
    try {
      parts = url.pathname.split('/').slice(1).map(decodeURIComponent);
    } catch {
      refuse('BAD_REQUEST', 'invalid percent-encoding in the path');
    }
    const allow = (...methods: string[]) => {
      if (!methods.includes(method)) refuse('METHOD_NOT_ALLOWED', `${method} is not allowed on ${url.pathname}`);
    };
    const path = parts.join('/');
    if (path === 'healthz') {
      allow('GET');
      return sendJson(res, 200, { ok: true });
    }
    if (path === 'v1/join') {
      allow('POST');
      return join(req, res, now);
    }
    if (path === 'v1/agents') {
      allow('GET');
      const network = networkParam(url);
      await authorize(req, network, now);
      return sendText(res, 200, `{"ok":true,"agents":[${listAgents(url, network).map((e) => e.json).join(',')}]}`);
    }
    if (path === 'v1/events') {
      allow('GET');
      const network = networkParam(url);
      await authorize(req, network, now);
      return hub.subscribe(network, res, listAgents(new URL('http://registry/'), network).map((e) => e.json));
    }
    if (path === 'v1/stats') {
      allow('GET');
      await authorize(req, networkParam(url), now);
      return sendJson(res, 200, { ok: true, ...stats() });
    }
    if (parts.length === 3 && parts[0] === 'v1' && parts[1] === 'agents' && parts[2] !== '') {
      allow('GET', 'PUT', 'DELETE');
      if (method === 'PUT') return publish(req, res, url, parts[2], now);
      if (method === 'DELETE') return liveness(req, res, url, parts[2], now, false);
      const network = networkParam(url);
      await authorize(req, network, now);
      return sendText(res, 200, `{"ok":true,"agent":${getAgent(network, parts[2]).json}}`);
    }
    if (parts.length === 4 && parts[0] === 'v1' && parts[1] === 'agents' && parts[3] === 'heartbeat') {
      allow('POST');
      return liveness(req, res, url, parts[2], now, true);
    }
    refuse('NOT_FOUND', `no such endpoint: ${url.pathname.slice(0, 100)}`);
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    counters.requests++;
    route(req, res).catch((e: unknown) => refused(req, res, e));
  };

  /** Answers a refusal (or an internal error) and counts it; never throws. */
  const refused = (req: IncomingMessage, res: ServerResponse, e: unknown) => {
    try {
      const err = e instanceof AgentVpnError && REFUSALS[e.code] ? e : new AgentVpnError('INTERNAL', 'internal error', REFUSALS.INTERNAL.hint);
      counters.refused[err.code] = (counters.refused[err.code] ?? 0) + 1;
      if (err.code === 'INTERNAL') log.error({ err: e, method: req.method, url: req.url?.slice(0, 200) }, 'request failed');
      else log.info({ code: err.code, method: req.method, url: req.url?.slice(0, 200), remote: req.socket?.remoteAddress, detail: err.message }, 'request refused');
      if (res.headersSent || res.destroyed) return void res.destroy();
      // A body we did not read in full is not drained: close the connection after answering.
      if (!req.complete) res.setHeader('connection', 'close');
      sendJson(res, REFUSALS[err.code].status, err.toJSON());
    } catch (bug) {
      log.error({ err: bug }, 'answering a refusal failed');
      res.destroy();
    }
  };

  const server: Server = tls ? createHttpsServer(tls, onRequest) : createHttpServer(onRequest);

  /** Only members of a network may use the built-in relay. */
  const isMember = (edPub: Uint8Array): boolean => {
    const id = agentIdOf(edPub);
    for (const s of networks.values()) if (s.members.has(id)) return true;
    return false;
  };

  /** UDP on the HTTP port number (any free port when that one is taken and the port was not chosen). */
  const startBuiltInRelay = async (httpPort: number): Promise<RunningRelay> => {
    const relayOpts = { stunSecondPort: true, tcpServer: server, allow: isMember, limits: opts.relayLimits, log: log.child({ component: 'relay' }) };
    try {
      return await startRelay({ ...relayOpts, udp: { host, port: httpPort } });
    } catch (e) {
      if (port !== 0) throw e;
      return startRelay({ ...relayOpts, udp: { host, port: 0 } });
    }
  };

  let relayRef: RunningRelay | null = null;
  /** The relay and STUN servers a joining agent is told about, at the host it reached us at. */
  const relayInfo = (req: IncomingMessage): { relays: RelayInfo[]; stun: string[] } => {
    if (!relayRef) return { relays: [], stun: [] };
    const h = advertisedHost(req, host);
    const tcp = `${tls ? 'https' : 'http'}://${formatHostPort(h, (server.address() as AddressInfo).port)}${UPGRADE_PATH}`;
    return {
      relays: [{ udp: formatHostPort(h, relayRef.udpPort), tcp }],
      stun: [formatHostPort(h, relayRef.udpPort), formatHostPort(h, relayRef.stunSecondPort)],
    };
  };
  // Slow or silent clients may not hold sockets open forever (SSE streams are already past this).
  server.headersTimeout = HEADERS_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.on('clientError', (_err, socket) => {
    counters.refused.BAD_REQUEST = (counters.refused.BAD_REQUEST ?? 0) + 1;
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
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
  };

  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new AgentVpnError('LISTEN_FAILED', `cannot listen on ${host}:${port}: ${e.message}`,
      e.code === 'EADDRINUSE' ? 'another process uses that port: pick another --listen port' : 'check the --listen address')));
    server.listen(port, host, () => resolve());
  }).catch(async (e) => {
    if (!opts.store) await store.close();
    throw e;
  });
  const bound = (server.address() as AddressInfo).port;
  let relay: RunningRelay | null = null;
  if (opts.relay ?? true) {
    try {
      relay = relayRef = await startBuiltInRelay(bound);
    } catch (e) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      if (!opts.store) await store.close();
      throw e;
    }
  }
  hub.start();
  const sweeper = setInterval(sweep, SWEEP_INTERVAL_MS);
  const url = `${tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${bound}`;
  log.info({ url, network: defaultNetwork, pool: formatPrefix(pool), offlineAfterMs, event: 'listening' }, 'registry listening');

  let stopping: Promise<void> | undefined;
  return {
    url,
    port: bound,
    stats,
    createToken: (o = {}) => createJoinToken(store, { network: o.network ?? defaultNetwork, expiresInMs: o.expiresInMs, uses: o.uses }),
    relay,
    stop: () => (stopping ??= (async () => {
      clearInterval(sweeper);
      hub.stop();
      await relay?.stop();
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
