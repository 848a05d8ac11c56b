import { readFileSync } from 'node:fs';
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import https from 'node:https';
import { AgentVpnError } from '../errors.js';
import type { Identity } from '../identity/identity.js';
import type { KeyStatement } from '../identity/rotation.js';
import {
  BACKOFF_MAX_MS, BACKOFF_MIN_MS, DEFAULT_REQUEST_TIMEOUT_MS, HEARTBEAT_LABEL, LEAVE_LABEL, STREAM_IDLE_MS, agentAuthorization, signJoin, signTimestamp,
  type AgentChangeKind, type AgentView, type AuditHeadView, type AuditShip, type AuditWitnessView, type JoinResult, type PolicyView,
} from './protocol.js';
import type { SignedRecord } from './record.js';
import { signPathReport, type ReportedPath } from './path-report.js';
import { sessionAuthorization } from './read-sessions.js';
import { ReaderDigest, VIEW_DIGEST_HEADER } from './view-digest.js';

export type { AgentView, AuditHeadView, AuditShip, AuditWitnessView, JoinResult, PolicyView } from './protocol.js';

/**
 * A refusal from the registry, with its whole answer: 409 AUDIT_GAP carries `held` and `cosigned`
 * (where to ship from), which a caller reads from `answer`.
 */
export class RegistryRefusal extends AgentVpnError {
  constructor(code: string, message: string, hint: string, readonly answer: Record<string, unknown>) {
    super(code, message, hint);
  }
}

/** Answers larger than this are not a registry's (10,000 agents list in a few MiB). */
const MAX_RESPONSE_BYTES = 256 * 1024 * 1024;
/** A resume point as it may go back in a header: printable ASCII, at most 64 characters (the registry's are 59). */
const EVENT_ID = /^[\x21-\x7e]{1,64}$/;

const UNREACHABLE_HINT = 'check the --registry URL and that the registry is running and reachable; established tunnels keep working meanwhile';
const TLS_ERRORS = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL/;

/**
 * Newest timestamp signed per identity. The registry takes each signed timestamp of an agent
 * once (join, heartbeat, leave, reads, event streams alike), so no two requests share one.
 */
const lastTimestamps = new Map<string, number>();

function nextTimestamp(id: string): number {
  const t = Math.max(Date.now(), (lastTimestamps.get(id) ?? 0) + 1);
  lastTimestamps.set(id, t);
  return t;
}

/** What GET /v1/agents filters on: a capability query, a name (its current holder), liveness. */
export interface ListFilter {
  cap?: string;
  name?: string;
  online?: boolean;
}

export interface WatchHandlers {
  snapshot(agents: AgentView[]): void;
  change(kind: AgentChangeKind, agent: AgentView): void;
  /** An operator removed or blocked agent `id`: drop it as a peer. */
  removed?(id: string): void;
  /** The network's policy: after every snapshot (null: none, everything is allowed) and on each change. */
  policy?(policy: PolicyView | null): void;
  connected?(): void;
  disconnected?(err: Error): void;
  /**
   * After a reconnect to the same instance (or, with `gone`, one resumed by digest): no snapshot
   * comes, the state kept from before stays right, and what changed meanwhile follows as events
   * (the registry's events.ts, "Resuming").
   */
  resumed?(): void;
  /**
   * Agent `id` is no longer in the registry's view: a resume by digest found it missing (no
   * operator's removal is implied). With this handler the watcher also resumes by digest, where
   * its point is another process's (view-digest.ts).
   */
  gone?(id: string): void;
}

/** Where a watcher may resume: the last point an instance's stream gave (only that instance takes it). */
export interface ResumePoint {
  id: string;
  instance: number;
}

/** A running watch: close() ends it; resumePoint() and heldViews() are what a later watch() of the same reader may start from. */
export interface Watcher {
  close(): void;
  resumePoint(): ResumePoint | null;
  /** The digest of the views this watcher was given (with `gone` among its handlers). */
  heldViews(): ReaderDigest | null;
}

export interface RegistryClientOptions {
  /** One registry URL, or several (comma-separated) instances of one registry on a shared database. */
  url: string;
  identity: Identity;
  network: string;
  caFile?: string;
  timeoutMs?: number;
}

/** One registry instance the client may talk to. */
interface Instance {
  url: string;
  base: URL;
  basePath: string;
  transport: typeof http | typeof https;
  agent: http.Agent;
  /** The read session with this instance, or its opening under way. */
  session?: ReadSession | Promise<ReadSession | null>;
  /** The instance answered that it has no read sessions (an older registry): signed reads until then. */
  noSessionsUntil: number;
}

interface ReadSession {
  id: string;
  secret: Buffer;
  expiresAt: number;
}

/** How a request authenticates: `signed` (Ed25519), or 'session' for a read under the instance's read session. */
interface RequestAuth {
  body?: unknown;
  signed?: boolean | 'session';
}

/**
 * Connections are kept between requests. With a timeout of its own, Node's agent also follows the
 * registry's `Keep-Alive: timeout=` hint, letting a spare connection go just before the registry would.
 */
const KEPT_CONNECTIONS = { keepAlive: true, timeout: 150_000 };

/** How a kept connection that the registry closed meanwhile fails a request written to it. */
const STALE_SOCKET_ERRORS = new Set(['ECONNRESET', 'EPIPE']);

/**
 * A cut stream's one retry at its own instance gets this long to answer (with several instances):
 * one that takes connections but never answers (a frozen loop, a balancer before a dead backend)
 * must not hold failover back for a whole request timeout.
 */
const SAME_INSTANCE_RETRY_TIMEOUT_MS = 2_000;

/** An instance without read sessions is asked again after this long (it may have been upgraded meanwhile). */
const NO_SESSIONS_RETRY_MS = 5 * 60_000;
/** A session this close to its end is replaced before the next read, so reads do not meet its expiry. */
const SESSION_RENEW_BEFORE_MS = 60_000;

/** Registry instances one client may be given (`--registry URL1,URL2,...`). */
const MAX_INSTANCES = 16;

function parseInstanceUrl(url: string): URL {
  let base: URL;
  try {
    base = new URL(url);
  } catch {
    throw new AgentVpnError('BAD_REGISTRY_URL', `invalid registry URL "${url}"`, 'give the registry as http(s)://HOST:PORT (several instances: comma-separated)');
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw new AgentVpnError('BAD_REGISTRY_URL', `registry URL "${url}" is not http or https`, 'give the registry as http(s)://HOST:PORT');
  }
  return base;
}

/**
 * Talks to a registry on behalf of one agent identity in one network. Given several instances
 * of one registry (one database behind them), it starts at one chosen by the agent's ID (so a
 * fleet spreads over them), stays with the one that answers, and moves to the next when a
 * request cannot reach it or its event stream fails: a dead instance costs one failed attempt.
 */
export class RegistryClient {
  private readonly instances: Instance[];
  /** Index of the instance requests go to first. */
  private active: number;
  private readonly ca: Buffer | undefined;
  private readonly timeoutMs: number;

  constructor(private readonly opts: RegistryClientOptions) {
    const urls = opts.url.split(',').map((u) => u.trim()).filter((u) => u !== '');
    if (urls.length === 0 || urls.length > MAX_INSTANCES) {
      throw new AgentVpnError('BAD_REGISTRY_URL', `give 1 to ${MAX_INSTANCES} registry URLs (got ${urls.length})`, 'e.g. --registry https://reg1.example:7443,https://reg2.example:7443');
    }
    const bases = urls.map(parseInstanceUrl);
    if (opts.caFile) {
      try {
        this.ca = readFileSync(opts.caFile);
      } catch (e) {
        throw new AgentVpnError('REGISTRY_CA', `cannot read the registry CA certificate ${opts.caFile}: ${(e as Error).message}`, 'check the CA file path and its permissions', { cause: e });
      }
    }
    this.instances = bases.map((base, i) => ({
      url: urls[i], base, basePath: base.pathname.replace(/\/+$/, ''), transport: base.protocol === 'https:' ? https : http,
      agent: base.protocol === 'https:' ? new https.Agent({ ...KEPT_CONNECTIONS, ca: this.ca }) : new http.Agent(KEPT_CONNECTIONS), noSessionsUntil: 0,
    }));
    // Spread agents over the instances: the same agent starts at the same one each time.
    this.active = [...opts.identity.id].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) % this.instances.length;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /** The URL of the instance in use. */
  get url(): string {
    return this.instances[this.active].url;
  }

  /** After instance `i` failed: the next one is tried first (unless another failure moved on already). */
  private failedOver(i: number): void {
    if (this.active === i && this.instances.length > 1) this.active = (i + 1) % this.instances.length;
  }

  private get id(): string {
    return this.opts.identity.id;
  }

  private agentPath(suffix = ''): string {
    return `/v1/agents/${encodeURIComponent(this.id)}${suffix}?network=${encodeURIComponent(this.opts.network)}`;
  }

  async join(name: string, token?: string): Promise<JoinResult> {
    const body = signJoin(this.opts.identity, this.opts.network, name, nextTimestamp(this.id), token);
    const r = (await this.request('POST', '/v1/join', { body })) as unknown as JoinResult;
    // Relay and STUN lists are absent from registries older than the built-in relay.
    const relays = Array.isArray(r.relays) ? r.relays.filter((x) => typeof x?.udp === 'string' && (x.tcp === undefined || typeof x.tcp === 'string')) : [];
    const stun = Array.isArray(r.stun) ? r.stun.filter((x) => typeof x === 'string') : [];
    return {
      network: r.network, ipv4: r.ipv4, ipv6: r.ipv6, ulaPrefix: r.ulaPrefix, pool: r.pool, heartbeatIntervalMs: r.heartbeatIntervalMs, offlineAfterMs: r.offlineAfterMs,
      relays: relays.map((x) => ({
        udp: x.udp, ...(x.tcp ? { tcp: x.tcp } : {}), ...(typeof x.name === 'string' ? { name: x.name } : {}), ...(typeof x.region === 'string' ? { region: x.region } : {}),
      })), stun,
    };
  }

  /** After a key rotation: sign with the new current key (the agent ID, and so the timestamps, stay). */
  setIdentity(identity: Identity): void {
    this.opts.identity = identity;
  }

  /** Publishes a record; `chain` (the identity's key chain) is needed once the record is signed by a rotated key. */
  async publish(signed: SignedRecord, chain?: readonly KeyStatement[]): Promise<void> {
    await this.request('PUT', this.agentPath(), { body: chain && chain.length > 0 ? { ...signed, chain } : signed });
  }

  /** The network's policy (null: none), by a signed read. */
  async getPolicy(): Promise<PolicyView | null> {
    const answer = await this.request('GET', `/v1/policy?network=${encodeURIComponent(this.opts.network)}`, { signed: 'session' });
    if (answer.policy === null || answer.policy === undefined) return null;
    const policy = parsePolicyView(answer.policy);
    if (policy === undefined) throw new AgentVpnError('REGISTRY_BAD_ANSWER', 'the registry answered with a malformed policy', 'check the registry version');
    return policy;
  }

  async heartbeat(): Promise<void> {
    await this.request('POST', this.agentPath('/heartbeat'), { body: signTimestamp(this.opts.identity, HEARTBEAT_LABEL, this.opts.network, nextTimestamp(this.id)) });
  }

  /** Our paths to our peers, for the registry's console (path-report.ts); resolves whether the registry kept the report. */
  async reportPaths(paths: ReportedPath[]): Promise<boolean> {
    const a = await this.request('PUT', this.agentPath('/paths'), { body: signPathReport(this.opts.identity, this.opts.network, nextTimestamp(this.id), paths) });
    return a.kept === true;
  }

  async leave(): Promise<void> {
    await this.request('DELETE', this.agentPath(), { body: signTimestamp(this.opts.identity, LEAVE_LABEL, this.opts.network, nextTimestamp(this.id)) });
  }

  /** Every agent matching `filter`, page after page (the registry bounds a page: list-page.ts). */
  async list(filter: ListFilter = {}): Promise<AgentView[]> {
    const out: AgentView[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.listPage(filter, { cursor });
      out.push(...page.agents);
      cursor = page.next ?? undefined;
    } while (cursor !== undefined);
    return out;
  }

  /** One page of agents in ID order; pass its `next` as `cursor` for the page after (null: the last page). */
  async listPage(filter: ListFilter = {}, page: { limit?: number; cursor?: string } = {}): Promise<{ agents: AgentView[]; next: string | null }> {
    const q = new URLSearchParams({ network: this.opts.network });
    if (filter.cap !== undefined) q.set('cap', filter.cap);
    if (filter.name !== undefined) q.set('name', filter.name);
    if (filter.online !== undefined) q.set('online', filter.online ? '1' : '0');
    if (page.limit !== undefined) q.set('limit', String(page.limit));
    if (page.cursor !== undefined) q.set('cursor', page.cursor);
    const a = await this.request('GET', `/v1/agents?${q}`, { signed: 'session' });
    if (!Array.isArray(a.agents) || !(a.next === undefined || typeof a.next === 'string')) throw badAnswer('a malformed list of agents');
    // A cursor that does not move forward would loop forever.
    if (typeof a.next === 'string' && page.cursor !== undefined && a.next <= page.cursor) throw badAnswer('a list page whose cursor does not advance');
    return { agents: a.agents as AgentView[], next: (a.next as string | undefined) ?? null };
  }

  async get(idOrName: string): Promise<AgentView> {
    const path = `/v1/agents/${encodeURIComponent(idOrName)}?network=${encodeURIComponent(this.opts.network)}`;
    return ((await this.request('GET', path, { signed: 'session' })) as { agent: AgentView }).agent;
  }

  /** The registry's witness key (unauthenticated: pin it at first contact). */
  async auditWitness(): Promise<AuditWitnessView> {
    const a = await this.request('GET', '/v1/audit/witness', {});
    if (typeof a.name !== 'string' || typeof a.publicKey !== 'string' || Buffer.from(a.publicKey, 'base64').length !== 32) throw badAnswer('a malformed witness key');
    return { name: a.name, publicKey: a.publicKey };
  }

  /**
   * Ships entries [from, from + n) of this agent's log with its checkpoint of size from + n: the
   * registry answers the checkpoint it cosigned. Refusals throw a RegistryRefusal: AUDIT_GAP
   * (answer.held: ship from there), AUDIT_INCONSISTENT (a fork: kept by the registry), AUDIT_RATE_LIMITED.
   */
  async auditShip(ship: AuditShip): Promise<AuditHeadView & { cosigned: string }> {
    if (ship.agent !== this.id) throw new AgentVpnError('INTERNAL', `cannot ship the audit log of ${ship.agent} as ${this.id}`, 'this is a bug in agentvpn: report it');
    const path = `/v1/audit/ship?network=${encodeURIComponent(this.opts.network)}&agent=${encodeURIComponent(this.id)}`;
    const a = await this.request('POST', path, { body: ship });
    if (!Number.isSafeInteger(a.size) || typeof a.cosigned !== 'string') throw badAnswer('a malformed answer to an audit ship');
    return { size: a.size as number, cosigned: a.cosigned };
  }

  /** What the registry holds of this agent's log, by a signed read. */
  async auditHead(): Promise<AuditHeadView> {
    const a = await this.request('GET', `/v1/audit/head?network=${encodeURIComponent(this.opts.network)}&agent=${encodeURIComponent(this.id)}`, { signed: true });
    if (!Number.isSafeInteger(a.size) || !(a.cosigned === null || typeof a.cosigned === 'string')) throw badAnswer('a malformed audit head');
    return { size: a.size as number, cosigned: a.cosigned as string | null };
  }

  /** The registry's copy of this agent's entries [from, from + limit) (fewer at the end), by a signed read. */
  async auditEntries(from: number, limit: number): Promise<string[]> {
    const q = new URLSearchParams({ network: this.opts.network, agent: this.id, from: String(from), limit: String(limit) });
    const a = await this.request('GET', `/v1/audit/entries?${q}`, { signed: true });
    if (!Array.isArray(a.entries) || !a.entries.every((e) => typeof e === 'string')) throw badAnswer('malformed audit entries');
    return a.entries as string[];
  }

  /** Closes idle keep-alive connections (a client that is done need not wait for them to time out). */
  close(): void {
    for (const i of this.instances) i.agent.destroy();
  }

  private unreachable(e: Error & { code?: string }, at: Instance = this.instances[this.active]): AgentVpnError {
    if (e instanceof AgentVpnError) return e;
    if (TLS_ERRORS.test(e.code ?? '')) {
      return new AgentVpnError('REGISTRY_TLS', `the registry at ${at.url} failed TLS verification: ${e.message}`,
        "pass the registry's CA certificate (--registry-ca) or use a certificate valid for this host name", { cause: e });
    }
    return new AgentVpnError('REGISTRY_UNREACHABLE', `cannot reach the registry at ${at.url}: ${e.message}`, UNREACHABLE_HINT, { cause: e });
  }

  private requestOptions(at: Instance, method: string, path: string, headers: Record<string, string>): https.RequestOptions {
    return {
      protocol: at.base.protocol, hostname: at.base.hostname.replace(/^\[|\]$/g, ''), port: at.base.port || undefined,
      method, path, headers, ca: this.ca,
    };
  }

  /**
   * One JSON request; resolves with the `{ok:true,...}` body, rejects with the registry's error or
   * REGISTRY_UNREACHABLE. An instance that cannot be reached is skipped for the next (each attempt
   * signs afresh: the instances share one replay window, so no timestamp is used twice).
   */
  private async request(method: string, path: string, o: RequestAuth): Promise<Record<string, unknown>> {
    let last: unknown;
    for (let tried = 0; tried < this.instances.length; tried++) {
      const i = this.active;
      try {
        const signed = o.signed;
        return await (signed === 'session' ? this.readAt(this.instances[i], method, path) : this.requestAt(this.instances[i], method, path, { body: o.body, signed }));
      } catch (e) {
        if ((e as AgentVpnError).code !== 'REGISTRY_UNREACHABLE') throw e;
        last = e;
        this.failedOver(i);
      }
    }
    throw last;
  }

  /**
   * A read under the instance's read session (read-sessions.ts): an HMAC instead of a signature.
   * The session is opened with one signed request when there is none or it nears its end, and
   * again when the instance no longer knows it (restarted, or another instance behind one URL).
   * A registry without sessions gets signed reads.
   */
  private async readAt(at: Instance, method: string, path: string): Promise<Record<string, unknown>> {
    for (let attempt = 0; attempt < 2; attempt++) {
      const session = Date.now() < at.noSessionsUntil ? null : await this.sessionFor(at);
      if (!session) break;
      try {
        return await this.requestAt(at, method, path, { session });
      } catch (e) {
        if ((e as AgentVpnError).code !== 'SESSION_UNKNOWN') throw e;
        if (at.session === session) at.session = undefined;
      }
    }
    // Sessions do not hold here (several instances behind one URL answer in turn): a signed read.
    return this.requestAt(at, method, path, { signed: true });
  }

  /** The instance's session, opened once however many reads wait for it; null when the registry has none. */
  private sessionFor(at: Instance): Promise<ReadSession | null> | ReadSession {
    const s = at.session;
    if (s && !(s instanceof Promise) && s.expiresAt - Date.now() > SESSION_RENEW_BEFORE_MS) return s;
    if (s instanceof Promise) return s;
    const opening = this.requestAt(at, 'POST', `/v1/sessions?network=${encodeURIComponent(this.opts.network)}`, { signed: true }).then((a) => {
      const secret = typeof a.secret === 'string' ? Buffer.from(a.secret, 'base64') : null;
      if (typeof a.session !== 'string' || !secret || secret.length !== 32 || typeof a.expiresAt !== 'number') throw badAnswer('a malformed read session');
      return (at.session = { id: a.session, secret, expiresAt: a.expiresAt });
    }).catch((e: unknown) => {
      at.session = undefined; // a failed or malformed opening is not kept: the next read tries again
      // An older registry: signed reads, as before.
      if ((e as AgentVpnError).code === 'NOT_FOUND' || (e as AgentVpnError).code === 'METHOD_NOT_ALLOWED') {
        at.noSessionsUntil = Date.now() + NO_SESSIONS_RETRY_MS;
        return null;
      }
      throw e;
    });
    at.session = opening;
    return opening;
  }

  /**
   * One request to one instance. A kept connection the registry closed as the request went out
   * (its keep-alive timeout) is not an outage: the request is sent once more on a new connection,
   * its header signed afresh and its body as it was. A body that carries its own signed
   * timestamp (join, publish, heartbeat, leave) is then never applied twice: had the registry
   * taken the first, the second comes back REPLAYED.
   */
  private requestAt(at: Instance, method: string, path: string, o: { body?: unknown; signed?: boolean; session?: ReadSession }, resent = false): Promise<Record<string, unknown>> {
    const fullPath = at.basePath + path;
    const headers: Record<string, string> = { accept: 'application/json' };
    const payload = o.body === undefined ? undefined : Buffer.from(JSON.stringify(o.body));
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(payload.length);
    }
    if (o.session) headers.authorization = sessionAuthorization(o.session, method, fullPath, nextTimestamp(this.id));
    else if (o.signed) headers.authorization = agentAuthorization(this.opts.identity, method, fullPath, nextTimestamp(this.id));
    return new Promise((resolve, reject) => {
      const req = at.transport.request({ ...this.requestOptions(at, method, fullPath, headers), agent: at.agent, timeout: this.timeoutMs }, (res) => {
        readAll(res).then((text) => {
          try {
            resolve(parseAnswer(res, text));
          } catch (e) {
            reject(e);
          }
        }, (e: Error) => reject(this.unreachable(e, at)));
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.timeoutMs / 1000} s`)));
      req.on('error', (e: Error & { code?: string }) => {
        if (!resent && req.reusedSocket && STALE_SOCKET_ERRORS.has(e.code ?? '')) resolve(this.requestAt(at, method, path, o, true));
        else reject(this.unreachable(e, at));
      });
      req.end(payload);
    });
  }

  /**
   * Server-Sent Events with automatic reconnect (exponential backoff 0.5 s → 30 s, jitter); a
   * snapshot starts each connection unless it resumes. A stream that was cut (the connection
   * reset or ended) is tried once more at the same instance, which can resume it; any other
   * failure, or a second one, reconnects to the next instance. `from`: a point an earlier watcher
   * of this same reader's state gave (Watcher.resumePoint()), to resume instead of a snapshot.
   * With `handlers.gone`, each reconnect also sends the digest of the views this watcher (and
   * the earlier one whose `held` it takes over) was given, so a restarted registry or another
   * instance sends only the buckets that differ.
   */
  watch(handlers: WatchHandlers, from: ResumePoint | null = null, held: ReaderDigest | null = null): Watcher {
    let closed = false;
    let attempt = 0;
    let req: ClientRequest | undefined;
    let retry: NodeJS.Timeout | undefined;
    let idle: NodeJS.Timeout | undefined;
    /** The last resume point the stream gave, and the instance it came from (another instance's would not match). */
    let resumeAt = from;
    /** A cut stream was retried at its instance already, since it last went live. */
    let retriedSame = false;
    const views = handlers.gone ? (held ?? new ReaderDigest()) : null;

    const call = (fn: () => void) => {
      try {
        fn();
      } catch (e) {
        process.emitWarning(`registry watch handler threw: ${(e as Error).stack ?? String(e)}`);
      }
    };

    const connect = () => {
      if (closed) return;
      const index = this.active;
      const at = this.instances[index];
      const path = `${at.basePath}/v1/events?network=${encodeURIComponent(this.opts.network)}`;
      const headers: Record<string, string> = { accept: 'text/event-stream', authorization: agentAuthorization(this.opts.identity, 'GET', path, nextTimestamp(this.id)) };
      if (resumeAt?.instance === index) headers['last-event-id'] = resumeAt.id;
      const digest = views?.header();
      if (digest) headers[VIEW_DIGEST_HEADER] = digest;
      let failed = false;
      /** The instance answered 200: a failure from then on is the live stream's. */
      let live = false;
      /** `cut`: the live stream's connection reset or ended (a proxy, a blip), not a dead or silent instance. */
      const fail = (err: Error, cut = false) => {
        if (failed || closed) return;
        failed = true;
        clearTimeout(idle);
        current.destroy();
        // Refused for this reader's budget: the instance is fine; wait as long as it says (within the backoff's most), there.
        const waitMs = err instanceof RegistryRefusal && err.code === 'AGENT_RATE_LIMITED' ? Math.min(BACKOFF_MAX_MS, Number(err.answer.retryAfterMs) || 0) : 0;
        if (cut && !retriedSame && resumeAt?.instance === index) retriedSame = true;
        else if (waitMs === 0) this.failedOver(index);
        call(() => handlers.disconnected?.(err));
        const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt++);
        retry = setTimeout(connect, Math.max(waitMs, delay * (0.5 + Math.random() * 0.5)));
      };
      const resetIdle = () => {
        clearTimeout(idle);
        idle = setTimeout(() => fail(this.unreachable(new Error(`event stream silent for ${STREAM_IDLE_MS / 1000} s`), at)), STREAM_IDLE_MS);
      };
      const retryingSame = retriedSame && this.instances.length > 1;
      const timeout = retryingSame ? Math.min(this.timeoutMs, SAME_INSTANCE_RETRY_TIMEOUT_MS) : this.timeoutMs;
      const current = at.transport.request({ ...this.requestOptions(at, 'GET', path, headers), agent: false, timeout });
      req = current;
      // A reset of the live stream reaches the request first (ECONNRESET), before the response's 'aborted'.
      current.on('error', (e) => fail(this.unreachable(e, at), live));
      current.on('timeout', () => fail(this.unreachable(new Error(`no answer within ${timeout / 1000} s`), at)));
      current.on('response', (res) => {
        if (res.statusCode !== 200) {
          readAll(res).then((text) => fail(answerError(res, text)), (e: Error) => fail(this.unreachable(e, at)));
          return;
        }
        current.setTimeout(0);
        live = true;
        call(() => handlers.connected?.());
        resetIdle();
        const parser = new SseParser(() => fail(new AgentVpnError('REGISTRY_BAD_RESPONSE', `the registry sent an event line over ${MAX_RESPONSE_BYTES} bytes`,
          'check that the URL points at an agentvpn registry')), (id) => (resumeAt = { id, instance: index }), (event, data) => {
          let parsed: { agents?: AgentView[]; agent?: AgentView; policy?: unknown; id?: unknown; bucket?: unknown; ids?: unknown };
          try {
            parsed = JSON.parse(data);
          } catch {
            return fail(new AgentVpnError('REGISTRY_BAD_RESPONSE', 'the registry sent an event that is not JSON', 'check that the URL points at an agentvpn registry'));
          }
          // A policy event of null: the network has none (as in a snapshot; a resume by digest always says which).
          if (parsed === null && event === 'policy') return call(() => handlers.policy?.(null));
          // `null` or a bare value would throw below, outside any handler's guard, and end the daemon.
          if (parsed === null || typeof parsed !== 'object') {
            return fail(new AgentVpnError('REGISTRY_BAD_RESPONSE', 'the registry sent an event that is not a JSON object', 'check that the URL points at an agentvpn registry'));
          }
          if (event === 'snapshot' && Array.isArray(parsed.agents)) {
            attempt = 0;
            retriedSame = false;
            resumeAt = null; // a point from before this snapshot (from another instance, maybe) would not match it
            views?.snapshot(parsed.agents);
            call(() => handlers.snapshot(parsed.agents!));
            // No policy (null) is news; a malformed one is not: it must never read as "allow all".
            const policy = parsed.policy === null || parsed.policy === undefined ? null : parsePolicyView(parsed.policy);
            if (policy !== undefined) call(() => handlers.policy?.(policy));
          } else if ((event === 'upsert' || event === 'online' || event === 'offline') && parsed.agent) {
            views?.change(parsed.agent);
            call(() => handlers.change(event, parsed.agent!));
          } else if (event === 'removed' && typeof parsed.id === 'string') {
            views?.removed(parsed.id);
            call(() => handlers.removed?.(parsed.id as string));
          } else if (event === 'bucket' && views) {
            const gone = views.bucket(parsed);
            if (!gone) return fail(new AgentVpnError('REGISTRY_BAD_RESPONSE', 'the registry sent a malformed bucket event', 'check that the URL points at an agentvpn registry'));
            for (const id of gone) call(() => handlers.gone!(id));
          } else if (event === 'policy') {
            const policy = parsePolicyView(parsed);
            if (policy !== undefined) call(() => handlers.policy?.(policy));
          } else if (event === 'resumed') {
            attempt = 0;
            retriedSame = false;
            call(() => handlers.resumed?.());
          }
        });
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          resetIdle();
          parser.push(chunk);
        });
        res.on('end', () => fail(this.unreachable(new Error('the registry closed the event stream'), at), true));
        res.on('error', (e) => fail(this.unreachable(e, at), true));
      });
      current.end();
    };

    connect();
    return {
      close: () => {
        closed = true;
        clearTimeout(retry);
        clearTimeout(idle);
        req?.destroy();
      },
      resumePoint: () => resumeAt,
      heldViews: () => views,
    };
  }
}

/** A PolicyView from the registry's JSON, or undefined when it is malformed. */
function parsePolicyView(v: unknown): PolicyView | undefined {
  const p = v as { version?: unknown; policy?: unknown } | null;
  if (!p || typeof p !== 'object' || !Number.isSafeInteger(p.version) || typeof p.policy !== 'string') return undefined;
  return { version: p.version as number, policy: p.policy };
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    res.on('data', (c: Buffer) => {
      total += c.length;
      if (total > MAX_RESPONSE_BYTES) res.destroy(new Error('answer too large'));
      else chunks.push(c);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
    res.on('aborted', () => reject(new Error('connection closed mid-answer')));
  });
}

function badAnswer(what: string): AgentVpnError {
  return new AgentVpnError('REGISTRY_BAD_ANSWER', `the registry answered with ${what}`, 'check the registry version');
}

function answerError(res: IncomingMessage, text: string): AgentVpnError {
  try {
    const body = JSON.parse(text) as { ok?: boolean; code?: unknown; message?: unknown; hint?: unknown };
    if (body.ok === false && typeof body.code === 'string') {
      return new RegistryRefusal(body.code, String(body.message ?? body.code), String(body.hint ?? ''), body as Record<string, unknown>);
    }
  } catch {
    // Not JSON: not a registry (a proxy's error page, say).
  }
  return new AgentVpnError('REGISTRY_BAD_RESPONSE', `the registry answered HTTP ${res.statusCode} without an agentvpn answer`, 'check that the URL points at an agentvpn registry (and not at a proxy)');
}

function parseAnswer(res: IncomingMessage, text: string): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw answerError(res, text);
  }
  if (!body || typeof body !== 'object' || (body as { ok?: unknown }).ok !== true) throw answerError(res, text);
  return body as Record<string, unknown>;
}

/**
 * Incremental text/event-stream parser: calls `onEvent(event, data)` per dispatched event;
 * comments are ignored. A line (a snapshot is one) longer than MAX_RESPONSE_BYTES calls
 * `onOverflow` instead of growing without end.
 */
class SseParser {
  private partial: string[] = [];
  private partialChars = 0;
  private event = '';
  private data: string[] = [];
  private id: string | null = null;

  /** `onId`: a block's `id:` field, once the block is complete (an id-only block too, as in EventSource). */
  constructor(private readonly onOverflow: () => void, private readonly onId: (id: string) => void, private readonly onEvent: (event: string, data: string) => void) {}

  push(chunk: string): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf('\n', start);
      if (nl < 0) {
        if (start < chunk.length) this.partial.push(chunk.slice(start));
        this.partialChars += chunk.length - start;
        if (this.partialChars > MAX_RESPONSE_BYTES) {
          this.partial = [];
          this.partialChars = 0;
          this.onOverflow();
        }
        return;
      }
      let line = this.partial.join('') + chunk.slice(start, nl);
      this.partial = [];
      this.partialChars = 0;
      if (line.endsWith('\r')) line = line.slice(0, -1);
      this.line(line);
      start = nl + 1;
    }
  }

  private line(line: string): void {
    if (line === '') {
      if (this.data.length) this.onEvent(this.event || 'message', this.data.join('\n'));
      if (this.id !== null) this.onId(this.id);
      this.event = '';
      this.data = [];
      this.id = null;
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (name === 'event') this.event = value;
    else if (name === 'data') this.data.push(value);
    else if (name === 'id' && EVENT_ID.test(value)) this.id = value;
  }
}
