import { createHmac, timingSafeEqual } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import type { KeyStatement } from '../identity/rotation.js';
import { TokenBucket } from '../util/token-bucket.js';
import { Entry, type Fleet, type NetworkState } from './fleet-state.js';
import type { OperatorSync } from './operator-sync.js';
import { CHANGE_CHANNEL } from './pg-migrations.js';
import type { PgStore } from './pg-store.js';
import type { AgentChangeKind, ChangeFeedStats } from './protocol.js';
import type { AgentRecord, SignedRecord } from './record.js';
import type { Member, StoredKeyChain } from './store.js';
import { parseStoredTags } from './tags.js';

/**
 * Keeps one registry instance's memory (fleet-state.ts) and event streams in step with the
 * others on the same PostgreSQL database. The tables' triggers (pg-migrations.ts, version 3)
 * NOTIFY channel `agentvpn_changes` at each commit; this LISTENs on a connection of its own and
 * applies each change as if it had been made here: so every instance's streams show every change.
 * A notification carries the row, so applying it reads nothing; one this instance wrote itself
 * (it applied it in memory already) is skipped before it is even parsed.
 *
 * A payload is three parts separated by ".":
 *
 * | part     | form                          | meaning                                                        |
 * | -------- | ----------------------------- | -------------------------------------------------------------- |
 * | instance | 0-64 of [A-Za-z0-9_-]         | agentvpn.instance of the writer's connection (pg-store.ts); empty: not a registry (psql, an older CLI) |
 * | mac      | 64 hex digits, or empty       | HMAC-SHA256(feed_key.k, body); empty: the writer may not read feed_key |
 * | body     | JSON object, at most 7,800 bytes | one of the rows below                                       |
 *
 * | t        | fields (full form)                                            | short form | here                                     |
 * | -------- | ------------------------------------------------------------- | ---------- | ---------------------------------------- |
 * | "member" | n: network, i: agent ID, q, name, ipv4, joined, tags (JSON text) | n, i    | applied; re-read for a rename            |
 * | "record" | n, i, q, seq, rec: the record, sig, o: online, s: last seen, k: key chain length | n, i | applied; re-read if k is longer than the chain held |
 * | "live"   | n, i, o, s                                                    | (never)    | applied if not older than what we hold   |
 * | "action" | q: seq                                                        | (never)    | OperatorSync polls at once               |
 *
 * The short form is sent when the full one would not fit a notification (PostgreSQL refuses
 * 8,000 bytes); then the receiver re-reads the row, as it does when it is missing the member, or
 * when `q` (the newest operator action the writer saw) is older than an action applied here:
 * a removal applied since must not be undone by an older row. Within one subject a newer
 * notification replaces a pending one and moves to the end, so rows apply in commit order.
 *
 * Who may send: any role that may connect to the database may NOTIFY. A payload whose MAC is
 * wrong is dropped (`forged`). One without a MAC (`unauthenticated`: a writer whose role may not
 * read feed_key, or anyone) is never believed: its subject is re-read from the tables, within
 * UNAUTHENTICATED_READS_PER_S, and dropped past it; an operator action only makes us poll.
 * Without the key (this role may not read feed_key) every change is re-read, as before version 3.
 *
 * Removals, blocks, policies and admin tokens travel as operator actions (operator-sync.ts
 * applies them; its poll each sweep is the fallback). A lost LISTEN connection is reconnected
 * with backoff, then everything is re-read (members, records, key chains, actions): what was
 * missed while it was away shows then.
 */

/** Notifications waiting to be applied: past this, they are dropped for one full re-read (a burst costs O(fleet) once, not unbounded memory). */
const MAX_PENDING = 10_000;
/** Payload characters held by pending notifications: 10,000 records of ~1 KiB fit; 10,000 of 8 KB would not (80 MB), they cost a re-read instead. */
const MAX_PENDING_CHARS = 16 * 1024 * 1024;
/** Re-reads for notifications without a MAC: a writer without the key keeps working, a NOTIFY flood costs at most this many reads a second. */
const UNAUTHENTICATED_READS_PER_S = 100;
const UNAUTHENTICATED_READS_BURST = 200;
/** PostgreSQL refuses a payload of 8,000 bytes or more (and a character is at least a byte): a longer one is not from a trigger. */
const MAX_PAYLOAD_CHARS = 8_000;
/** The LISTEN connection is probed this often: a silently dead one would lose changes without an error. */
const HEALTH_INTERVAL_MS = 5_000;
/** Reconnect backoff: from the first to the last, doubling. */
const RECONNECT_MIN_MS = 200;
const RECONNECT_MAX_MS = 5_000;
/** A signature's base64 is 88 characters; a stored one is never longer than this. */
const MAX_SIGNATURE_CHARS = 256;
/** A member's tags as stored (16 tags of 63 characters, quoted). */
const MAX_TAGS_CHARS = 2_048;

/** A record as a notification carries it. */
export interface CarriedRecord {
  signed: SignedRecord;
  online: boolean;
  lastSeen: number;
  /** Statements in the agent's stored key chain (0: it never rotated). */
  links: number;
}

/** A change; `member` and `carried` are absent in the short form (and from a sender without the key). `q`: see the header. */
export type Change =
  | { t: 'member'; n: string; i: string; q?: number; member?: Member }
  | { t: 'record'; n: string; i: string; q?: number; carried?: CarriedRecord }
  | { t: 'live'; n: string; i: string; o: boolean; s: number }
  | { t: 'action'; q: number };

export type ParsedChange =
  | { ok: true; from: string; authenticated: boolean; change: Change }
  | { ok: false; reason: 'malformed' | 'forged' };

const INSTANCE_ID = /^[A-Za-z0-9_-]{0,64}$/;
const MAC_HEX = /^(?:[0-9a-f]{64})?$/;

const isText = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 256;
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const MALFORMED = { ok: false, reason: 'malformed' } as const;

/** Whether `mac` (hex) is HMAC-SHA256(key, body). */
function macMatches(key: Buffer, body: string, mac: string): boolean {
  return timingSafeEqual(createHmac('sha256', key).update(body, 'utf8').digest(), Buffer.from(mac, 'hex'));
}

/**
 * A payload as one of the table's rows, or why not. The MAC is checked before the body is
 * parsed; `key` null: the MAC is not checked and the change is not authenticated.
 */
export function parseChange(payload: string | undefined, key: Buffer | null): ParsedChange {
  if (payload === undefined || payload.length >= MAX_PAYLOAD_CHARS) return MALFORMED;
  const dot1 = payload.indexOf('.');
  const dot2 = dot1 < 0 ? -1 : payload.indexOf('.', dot1 + 1);
  if (dot2 < 0) return MALFORMED;
  const from = payload.slice(0, dot1);
  const mac = payload.slice(dot1 + 1, dot2);
  const body = payload.slice(dot2 + 1);
  if (!INSTANCE_ID.test(from) || !MAC_HEX.test(mac)) return MALFORMED;
  const authenticated = key !== null && mac !== '';
  if (authenticated && !macMatches(key, body, mac)) return { ok: false, reason: 'forged' };
  let v: unknown;
  try {
    v = JSON.parse(body);
  } catch {
    return MALFORMED;
  }
  const change = isObject(v) ? changeOf(v) : null;
  return change ? { ok: true, from, authenticated, change } : MALFORMED;
}

function changeOf(v: Record<string, unknown>): Change | null {
  if (v.t === 'action') return isCount(v.q) ? { t: 'action', q: v.q } : null;
  if (!isText(v.n) || !isText(v.i)) return null;
  const { n, i } = v;
  if (v.t === 'live') return typeof v.o === 'boolean' && isCount(v.s) ? { t: 'live', n, i, o: v.o, s: v.s } : null;
  if (v.t === 'member') {
    if (v.name === undefined) return { t: 'member', n, i };
    if (!isCount(v.q) || !isText(v.name) || !isText(v.ipv4) || !isCount(v.joined) || typeof v.tags !== 'string' || v.tags.length > MAX_TAGS_CHARS) return null;
    return { t: 'member', n, i, q: v.q, member: { id: i, network: n, name: v.name, ipv4: v.ipv4, joinedAt: v.joined, tags: parseStoredTags(v.tags) } };
  }
  if (v.t === 'record') {
    if (v.rec === undefined) return { t: 'record', n, i };
    const rec = v.rec;
    if (!isCount(v.q) || !isCount(v.seq) || !isCount(v.s) || !isCount(v.k) || typeof v.o !== 'boolean' || !isText(v.sig) || v.sig.length > MAX_SIGNATURE_CHARS) return null;
    if (!isRecordShape(rec, n, i, v.seq)) return null;
    return { t: 'record', n, i, q: v.q, carried: { signed: { record: rec, signature: v.sig }, online: v.o, lastSeen: v.s, links: v.k } };
  }
  return null;
}

/** The fields fleet-state.ts's Entry reads, with their types; the row's own network, ID and seq. */
function isRecordShape(r: unknown, network: string, id: string, seq: number): r is AgentRecord {
  if (!isObject(r)) return false;
  const texts = ['name', 'wgPublicKey', 'ipv4', 'ipv6'] as const;
  return r.network === network && r.id === id && r.seq === seq && texts.every((f) => typeof r[f] === 'string')
    && isCount(r.issuedAt) && isCount(r.expiresAt)
    && Array.isArray(r.endpoints) && r.endpoints.every((e) => typeof e === 'string')
    && Array.isArray(r.capabilities) && r.capabilities.every((c) => typeof c === 'string')
    && (r.key === undefined || typeof r.key === 'string') && (r.homeRelay === undefined || typeof r.homeRelay === 'string');
}

/** What a change without a trusted row becomes: a re-read of its subject. */
function shortForm(c: Change): Change {
  switch (c.t) {
    case 'action': return c;
    case 'member': return { t: 'member', n: c.n, i: c.i };
    default: return { t: 'record', n: c.n, i: c.i };
  }
}

export interface FollowContext {
  store: PgStore;
  fleet: Fleet;
  /** The server's OperatorSync: polls actions, and tells which it applied (the header's `q`). */
  sync: Pick<OperatorSync, 'poll' | 'appliedSeq'>;
  log: Logger;
  /** Logs a change and pushes it to the network's event streams (server.ts). */
  emit(network: string, kind: AgentChangeKind, entry: Entry, id: string): void;
}

interface Pending {
  change: Change;
  chars: number;
}

export class PgChangeFeed {
  private client: pg.Client | null = null;
  private readonly pending = new Map<string, Pending>();
  private pendingChars = 0;
  private resyncNeeded = false;
  private draining = false;
  private stopped = false;
  private backoff = RECONNECT_MIN_MS;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private health: NodeJS.Timeout | undefined;
  private key: Buffer | null = null;
  private readonly ownPrefix: string;
  private readonly unauthenticatedReads = new TokenBucket(UNAUTHENTICATED_READS_PER_S, UNAUTHENTICATED_READS_BURST);
  private readonly counts = { received: 0, own: 0, applied: 0, carried: 0, reads: 0, malformed: 0, forged: 0, unauthenticated: 0, reconnects: 0, resyncs: 0 };

  constructor(private readonly ctx: FollowContext) {
    this.ownPrefix = `${ctx.store.instance}.`;
  }

  /** Connects and LISTENs; resolves once listening (the first connection's failure is thrown: the store just connected, so it is real). */
  async start(): Promise<void> {
    this.key = await this.ctx.store.feedKey();
    if (!this.key) this.ctx.log.warn({ event: 'change-feed-no-key' }, 'this database role may not read feed_key: every change is re-read from the tables');
    await this.connect();
    // Changes committed between the server's first read of the fleet and this LISTEN: read it again once.
    this.resyncNeeded = true;
    void this.drain();
    this.health = setInterval(() => void this.probe(), HEALTH_INTERVAL_MS);
    this.health.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.health);
    clearTimeout(this.reconnectTimer);
    const c = this.client;
    this.client = null;
    await c?.end().catch(() => undefined);
  }

  stats(): ChangeFeedStats {
    return { connected: this.client !== null, ...this.counts };
  }

  private async connect(): Promise<void> {
    const c = new pg.Client({ connectionString: this.ctx.store.url, keepAlive: true, application_name: 'agentvpn-registry-feed' });
    c.on('notification', (m) => {
      if (m.channel === CHANGE_CHANNEL) this.received(m.payload);
    });
    c.on('error', (e) => this.lost(c, e));
    c.on('end', () => this.lost(c, new Error('connection closed')));
    try {
      await c.connect();
      await c.query(`LISTEN ${CHANGE_CHANNEL}`);
    } catch (e) {
      await c.end().catch(() => undefined);
      throw e;
    }
    this.client = c;
  }

  private lost(c: pg.Client, e: Error): void {
    if (this.client !== c) return;
    this.client = null;
    c.end().catch(() => undefined);
    if (this.stopped) return;
    this.ctx.log.warn({ event: 'change-feed-lost', err: e.message }, 'lost the database change feed; reconnecting');
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped) return;
    this.reconnectTimer = setTimeout(() => {
      this.connect().then(() => {
        this.counts.reconnects++;
        this.backoff = RECONNECT_MIN_MS;
        this.ctx.log.info({ event: 'change-feed-reconnected', ...this.stats() }, 'database change feed back; re-reading the fleet');
        // What changed while we were away: read it all again.
        this.resyncNeeded = true;
        this.pending.clear();
        this.pendingChars = 0;
        void this.drain();
      }, () => {
        this.backoff = Math.min(RECONNECT_MAX_MS, this.backoff * 2);
        this.scheduleReconnect();
      });
    }, this.backoff);
  }

  private async probe(): Promise<void> {
    const c = this.client;
    if (!c) return;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([c.query('SELECT 1'), new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('probe timed out')), HEALTH_INTERVAL_MS)))]);
    } catch (e) {
      this.lost(c, e as Error);
    } finally {
      clearTimeout(timer);
    }
  }

  private received(payload: string | undefined): void {
    this.counts.received++;
    // Ours: applied in memory when it was written (pg-store.ts sets the instance on its connections).
    if (payload?.startsWith(this.ownPrefix)) {
      this.counts.own++;
      return;
    }
    const parsed = parseChange(payload, this.key);
    if (!parsed.ok) {
      this.counts[parsed.reason]++;
      return;
    }
    let change = parsed.change;
    if (!parsed.authenticated) {
      if (this.key !== null && change.t !== 'action') {
        this.counts.unauthenticated++;
        if (!this.unauthenticatedReads.take()) return;
      }
      change = shortForm(change);
    }
    if (this.resyncNeeded) return; // the re-read covers it
    this.enqueue(change, payload!.length);
  }

  /** One pending change per subject: a newer one replaces it and goes last, so subjects apply in the order of their last commit. */
  private enqueue(change: Change, chars: number): void {
    const key = change.t === 'action' ? 'action' : `${change.t}\u0000${change.n}\u0000${change.i}`;
    const prior = this.pending.get(key);
    // An action waiting already keeps its place: the poll reads every action since the last it
    // applied, and moving it after rows written since (a rejoin) would undo those rows.
    if (prior && change.t === 'action') return;
    if (prior) {
      this.pending.delete(key);
      this.pendingChars -= prior.chars;
    }
    this.pending.set(key, { change, chars });
    this.pendingChars += chars;
    if (this.pending.size > MAX_PENDING || this.pendingChars > MAX_PENDING_CHARS) {
      this.pending.clear();
      this.pendingChars = 0;
      this.resyncNeeded = true;
    }
    void this.drain();
  }

  /** Applies pending changes one at a time, in arrival order. */
  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (!this.stopped) {
        if (this.resyncNeeded) {
          this.resyncNeeded = false;
          await this.resync();
          continue;
        }
        const next = this.pending.entries().next();
        if (next.done) break;
        this.pending.delete(next.value[0]);
        this.pendingChars -= next.value[1].chars;
        await this.apply(next.value[1].change);
        this.counts.applied++;
      }
    } catch (err) {
      // The database is unreachable or failed: read everything again once it answers.
      this.ctx.log.error({ err }, 'applying a database change failed; re-reading the fleet');
      this.resyncNeeded = true;
      setTimeout(() => void this.drain(), RECONNECT_MAX_MS).unref();
    } finally {
      this.draining = false;
    }
  }

  private async apply(c: Change): Promise<void> {
    const { store, fleet } = this.ctx;
    if (c.t === 'action') return this.ctx.sync.poll();
    if (fleet.isBlocked(c.n, c.i)) return;
    const state = fleet.net(c.n);
    if (c.t === 'live') return this.applyLiveness(c.n, state, c.i, c.o, c.s);
    const known = state.members.get(c.i);
    if (c.t === 'member') {
      // A rename may be older than one made here since (members have no seq): the table says which.
      if (c.member && this.notUndoingAction(c.q) && (!known || known.name === c.member.name)) {
        this.counts.carried++;
        return state.setMember(c.member);
      }
      this.counts.reads++;
      const m = await store.member(c.n, c.i);
      if (m) state.setMember(m);
      return;
    }
    const held = fleet.rotated.get(c.i)?.chain.length ?? 0;
    if (c.carried && known && this.notUndoingAction(c.q) && c.carried.links <= held) {
      this.counts.carried++;
      const { signed, online, lastSeen } = c.carried;
      return this.applyRecord(c.n, state, signed, online, lastSeen, null);
    }
    this.counts.reads++;
    const a = await store.agent(c.n, c.i);
    if (!a) return;
    state.setMember(a.member);
    this.applyRecord(c.n, state, a.record.signed, a.record.online, a.record.lastSeen, a.chain);
  }

  /** Whether a row written when action `q` was the newest is still current here: no action applied since (a removal) could make it stale. */
  private notUndoingAction(q: number | undefined): boolean {
    return q !== undefined && q >= this.ctx.sync.appliedSeq;
  }

  private applyRecord(network: string, state: NetworkState, signed: SignedRecord, online: boolean, lastSeen: number, chain: StoredKeyChain | null): void {
    const id = signed.record.id;
    const { fleet } = this.ctx;
    if (chain && chain.chain.length > (fleet.rotated.get(id)?.chain.length ?? 0)) {
      fleet.setRotated(id, Buffer.from(chain.key, 'base64'), chain.chain as KeyStatement[]);
    }
    const old = state.agents.get(id);
    if (old && old.view.record.seq >= signed.record.seq) return this.applyLiveness(network, state, id, online, lastSeen);
    const entry = new Entry({
      record: signed.record, signature: signed.signature, online, lastSeen, tags: state.members.get(id)?.tags, chain: fleet.rotated.get(id)?.chain,
    });
    state.setAgent(id, entry);
    this.ctx.emit(network, 'upsert', entry, id);
  }

  /** Liveness another instance wrote: applied unless we heard from the agent more recently. */
  private applyLiveness(network: string, state: NetworkState, id: string, online: boolean, lastSeen: number): void {
    const entry = state.agents.get(id);
    if (!entry) return;
    const v = entry.view;
    // At the same time only going offline counts (a leave or a sweep keeps last_seen): a genuine
    // "online" always comes with a newer time, so a replayed one is refused.
    if (lastSeen < v.lastSeen || (lastSeen === v.lastSeen && (online || !v.online))) return;
    const changed = v.online !== online;
    entry.setLiveness(online, lastSeen, true);
    if (changed) this.ctx.emit(network, online ? 'online' : 'offline', entry, id);
  }

  /** Reads the whole fleet again (after a reconnect or an overflow) and applies what differs. */
  private async resync(): Promise<void> {
    this.counts.resyncs++;
    const { store, fleet } = this.ctx;
    for (const m of await store.members()) if (!fleet.isBlocked(m.network, m.id)) fleet.net(m.network).setMember(m);
    const chains = new Map((await store.keyChains()).map((c) => [c.id, c]));
    for (const r of await store.records()) {
      if (fleet.isBlocked(r.network, r.id)) continue;
      const state = fleet.net(r.network);
      if (!state.members.has(r.id)) continue;
      this.applyRecord(r.network, state, r.signed, r.online, r.lastSeen, chains.get(r.id) ?? null);
    }
    await this.ctx.sync.poll();
  }
}
