import pg from 'pg';
import type { Logger } from 'pino';
import type { KeyStatement } from '../identity/rotation.js';
import { Entry, type Fleet, type NetworkState } from './fleet-state.js';
import type { OperatorSync } from './operator-sync.js';
import { CHANGE_CHANNEL } from './pg-migrations.js';
import type { PgStore } from './pg-store.js';
import type { AgentChangeKind } from './protocol.js';
import type { SignedRecord } from './record.js';
import type { StoredKeyChain } from './store.js';

/**
 * Keeps one registry instance's memory (fleet-state.ts) and event streams in step with the
 * others on the same PostgreSQL database. The tables' triggers (pg-migrations.ts) NOTIFY channel
 * `agentvpn_changes` at each commit; this LISTENs on a connection of its own, re-reads what a
 * notification names and applies it as if the change had been made here: so every instance's
 * streams show every change. Its own changes come back too and are no-ops (same seq, same liveness).
 *
 * | t        | fields                         | sent when                                  | here                                   |
 * | -------- | ------------------------------ | ------------------------------------------ | -------------------------------------- |
 * | "member" | n: network, i: agent ID        | a member row is inserted or updated        | re-read it: its name, IPv4, tags       |
 * | "record" | n, i                           | a record with a new seq is stored          | re-read record, member, key chain; upsert |
 * | "live"   | n, i, o: online, s: last seen  | a heartbeat, leave or sweep changed them   | applied if not older than what we hold |
 * | "action" | q: seq                         | an operator action was queued              | OperatorSync polls at once             |
 *
 * Removals, blocks, policies and admin tokens travel as operator actions (operator-sync.ts
 * applies them; its poll each sweep is the fallback). A lost LISTEN connection is reconnected
 * with backoff, then everything is re-read (members, records, key chains, actions): what was
 * missed while it was away shows then.
 */

/** Notifications waiting to be applied: past this, they are dropped for one full re-read (a burst costs O(fleet) once, not unbounded memory). */
const MAX_PENDING = 10_000;
/** A notification's payload is a few hundred bytes; a longer one is not ours. */
const MAX_PAYLOAD_CHARS = 1_024;
/** The LISTEN connection is probed this often: a silently dead one would lose changes without an error. */
const HEALTH_INTERVAL_MS = 5_000;
/** Reconnect backoff: from the first to the last, doubling. */
const RECONNECT_MIN_MS = 200;
const RECONNECT_MAX_MS = 5_000;

type Change =
  | { t: 'member' | 'record'; n: string; i: string }
  | { t: 'live'; n: string; i: string; o: boolean; s: number }
  | { t: 'action'; q: number };

const isText = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 256;

/** A payload as one of the table's rows, or null. */
export function parseChange(payload: string | undefined): Change | null {
  if (payload === undefined || payload.length > MAX_PAYLOAD_CHARS) return null;
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(payload) as Record<string, unknown>;
  } catch {
    return null;
  }
  if (v === null || typeof v !== 'object') return null;
  if (v.t === 'action') return Number.isSafeInteger(v.q) ? { t: 'action', q: v.q as number } : null;
  if (!isText(v.n) || !isText(v.i)) return null;
  if (v.t === 'member' || v.t === 'record') return { t: v.t, n: v.n, i: v.i };
  if (v.t === 'live' && typeof v.o === 'boolean' && Number.isSafeInteger(v.s)) return { t: 'live', n: v.n, i: v.i, o: v.o, s: v.s as number };
  return null;
}

export interface FollowContext {
  store: PgStore;
  fleet: Fleet;
  sync: OperatorSync;
  log: Logger;
  /** Logs a change and pushes it to the network's event streams (server.ts). */
  emit(network: string, kind: AgentChangeKind, entry: Entry, id: string): void;
}

export interface ChangeFeedStats {
  connected: boolean;
  received: number;
  applied: number;
  malformed: number;
  reconnects: number;
  resyncs: number;
}

export class PgChangeFeed {
  private client: pg.Client | null = null;
  private readonly pending = new Map<string, Change>();
  private resyncNeeded = false;
  private draining = false;
  private stopped = false;
  private backoff = RECONNECT_MIN_MS;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private health: NodeJS.Timeout | undefined;
  private readonly counts = { received: 0, applied: 0, malformed: 0, reconnects: 0, resyncs: 0 };

  constructor(private readonly ctx: FollowContext) {}

  /** Connects and LISTENs; resolves once listening (the first connection's failure is thrown: the store just connected, so it is real). */
  async start(): Promise<void> {
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
    const change = parseChange(payload);
    if (!change) {
      this.counts.malformed++;
      return;
    }
    if (this.resyncNeeded) return; // the re-read covers it
    // One pending change per subject: a newer one replaces it (a record read shows its liveness too).
    const key = change.t === 'action' ? 'action' : `${change.t === 'member' ? 'm' : 'r'}:${change.n}:${change.i}`;
    const prior = this.pending.get(key);
    if (!(prior?.t === 'record' && change.t === 'live')) this.pending.set(key, change);
    if (this.pending.size > MAX_PENDING) {
      this.pending.clear();
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
        await this.apply(next.value[1]);
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
    if (c.t === 'member') {
      const m = await store.member(c.n, c.i);
      if (m) state.setMember(m);
      return;
    }
    if (c.t === 'live') return this.applyLiveness(c.n, state, c.i, c.o, c.s);
    const a = await store.agent(c.n, c.i);
    if (!a) return;
    state.setMember(a.member);
    this.applyRecord(c.n, state, a.record.signed, a.record.online, a.record.lastSeen, a.chain);
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
    if (lastSeen < v.lastSeen || (lastSeen === v.lastSeen && online === v.online)) return;
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
