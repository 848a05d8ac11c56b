import { createHash, randomBytes } from 'node:crypto';
import pg from 'pg';
import { AgentVpnError } from '../errors.js';
import { formatPrefix } from '../ip/prefix.js';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import { extendsChain } from './key-chain.js';
import { LOCK, migrate } from './pg-migrations.js';
import type { SignedRecord } from './record.js';
import { WINDOW_SLOTS } from './replay-window.js';
import { MAX_CLOCK_SKEW_MS } from './protocol.js';
import { LivenessBehind, type LastSeenUpdate } from './liveness-behind.js';
import {
  poolRange, type AdmitRequest, type AdmitResult, type AuditAppend, type AuditAppendResult, type AuditEntryRow, type AuditHead, type AuditRefusal,
  type BlockedAgent, type LivenessRequest, type LivenessResult, type Member, type OperatorAction, type PutRecordResult, type RegistryStore,
  type RemoveResult, type StoredCheckpoint, type StoredKeyChain, type StoredPolicy, type StoredRecord, type StoredToken, type TimestampResult, type TokenCheck,
} from './store.js';
import { parseStoredTags } from './tags.js';

/**
 * The registry store on PostgreSQL: the same semantics as SqliteStore, method for method, safe
 * for several registry instances on one database. SQLite has one writer at a time; here every
 * step is a READ COMMITTED transaction that takes what it needs in the database itself:
 * - a transaction-scoped advisory lock per agent ID (replay window, membership, record, key chain),
 * - the network's pool row FOR UPDATE while an IPv4 is allocated (UNIQUE (network, ipv4) backs it),
 * - UNIQUE (network, name) for names (a conflict is NAME_TAKEN, not an error),
 * - UPDATE ... WHERE uses_left > 0 RETURNING for a token's uses,
 * - a global advisory lock around operator_actions and audit_refusals inserts, so their ids commit
 *   in order and a cursor (seq > N) never skips a row that committed late.
 * Deadlocks and serialization failures are retried (transactions and single statements alike);
 * lock order is agent, then pool or actions; multi-row liveness updates send their rows sorted,
 * which makes two of them meeting in opposite orders rare (and retried when they do).
 */

/** Connections per instance: the registry's requests are short; a few in flight cover 8 concurrent clients. */
const POOL_SIZE = 8;
/** Retries of a transaction PostgreSQL aborted to break a deadlock or a serialization conflict. */
const MAX_RETRIES = 8;
/** A statement that runs longer than this is cancelled (a stuck lock must not hold a request forever). */
const STATEMENT_TIMEOUT_MS = 10_000;
/** Connecting to the database gives up after this long. */
const CONNECT_TIMEOUT_MS = 5_000;

/** Random bytes of an instance ID: two instances never draw the same one (base64url: letters, digits, - and _). */
const INSTANCE_ID_BYTES = 12;

const RETRYABLE = new Set(['40001', '40P01']);
const UNIQUE_VIOLATION = '23505';

const INT8_OID = 20;
/** BIGINT columns as numbers: every one holds a millisecond time, a count or a seq, all below 2^53. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => oid === INT8_OID ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/** Whether a --db value names a PostgreSQL database rather than a SQLite file. */
export function isPostgresUrl(db: string): boolean {
  return /^postgres(ql)?:\/\//i.test(db);
}

/** The URL with any password replaced, for logs and messages. */
export function redactDbUrl(db: string): string {
  if (!isPostgresUrl(db)) return db;
  return db.replace(/^(postgres(?:ql)?:\/\/[^:@/]*):[^@/]*@/i, '$1:***@').replace(/([?&]password=)[^&]*/i, '$1***');
}

interface MemberRow { id: string; network: string; name: string; ipv4: string; joined_at: number; tags: string }
interface RecordRow { id: string; network: string; json: string; signature: string; last_seen: number; online: boolean }
interface AuditLogRow { size: number; frontier: string; cosigned: string | null }

const toMember = (r: MemberRow): Member => ({ id: r.id, network: r.network, name: r.name, ipv4: r.ipv4, joinedAt: r.joined_at, tags: parseStoredTags(r.tags) });
const toRecord = (r: RecordRow): StoredRecord => ({
  network: r.network, id: r.id, signed: { record: JSON.parse(r.json), signature: r.signature }, lastSeen: r.last_seen, online: r.online,
});
const toAuditHead = (agent: string, r: AuditLogRow): AuditHead => ({
  agent, size: r.size, frontier: (JSON.parse(r.frontier) as string[]).map((h) => Buffer.from(h, 'base64')), cosigned: r.cosigned,
});

type Client = pg.PoolClient;

/** Rows in (network, id) order, for multi-row updates from several instances (see the class comment). */
const byRow = (a: { network: string; id: string }, b: { network: string; id: string }) => (a.network < b.network ? -1 : a.network > b.network ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** What agentvpn_admit answers. */
interface AdmitRow {
  code: 'ok' | 'BAD_TOKEN' | 'NAME_TAKEN' | 'POOL_EXHAUSTED' | 'REPLAYED' | 'BLOCKED';
  created?: boolean;
  ipv4?: string;
  joined_at?: number;
  tags?: string;
  used_up?: boolean;
}

function admitRefusal(code: Exclude<AdmitRow['code'], 'ok'>, req: AdmitRequest): string {
  switch (code) {
    case 'BLOCKED': return `agent ${req.id} is blocked in network ${req.network}`;
    case 'REPLAYED': return replayed(req.id, req.timestamp).message;
    case 'NAME_TAKEN': return nameTaken(req.name, req.network).message;
    case 'POOL_EXHAUSTED': return `the address pool ${formatPrefix(req.pool)} of network ${req.network} has no free IPv4 address left`;
    case 'BAD_TOKEN': return req.tokenHash === null
      ? `a join token is needed to join network ${req.network}`
      : `the join token is not valid for network ${req.network} (unknown, expired or used up)`;
  }
}

function replayed(id: string, timestamp: number): { ok: false; code: 'REPLAYED'; message: string } {
  return { ok: false, code: 'REPLAYED', message: `agent ${id} already used the signed timestamp ${timestamp} (a replayed request?)` };
}

const nameTaken = (name: string, network: string) => ({ ok: false as const, code: 'NAME_TAKEN' as const, message: `name "${name}" is taken by another agent in network ${network}` });

function isNameConflict(e: unknown): boolean {
  const err = e as { code?: string; constraint?: string };
  return err.code === UNIQUE_VIOLATION && err.constraint === 'members_name_unique';
}

/** A database error as the registry reports it: never with the URL (it may hold a password). */
function dbError(e: unknown, what: string): AgentVpnError {
  const msg = (e as Error).message ?? String(e);
  return new AgentVpnError('REGISTRY_DB', `${what}: ${msg}`,
    'check that PostgreSQL is running and that the --db URL (or AGENTVPN_REGISTRY_DB) names a database this user may use', { cause: e });
}

export class PgStore implements RegistryStore {
  private closed = false;
  /** Heartbeats that only moved last_seen, written once a second (liveness-behind.ts). */
  private readonly behind = new LivenessBehind((updates) => this.writeLastSeen(updates));

  /**
   * `url` may hold a password: never log it (redactDbUrl). `instance`: this store's random ID, set
   * as agentvpn.instance on each of its connections; the change triggers put it in their payloads,
   * so this instance's change feed skips what it wrote itself (pg-change-feed.ts).
   */
  private constructor(private readonly pool: pg.Pool, readonly url: string, readonly instance: string) {}

  /** Connects and migrates; the error names the database by its redacted URL. */
  static async open(url: string): Promise<PgStore> {
    const instance = randomBytes(INSTANCE_ID_BYTES).toString('base64url');
    const { connectionString, options } = withStartupOption(url, `-c agentvpn.instance=${instance}`);
    const pool = new pg.Pool({
      connectionString, max: POOL_SIZE, types, connectionTimeoutMillis: CONNECT_TIMEOUT_MS, statement_timeout: STATEMENT_TIMEOUT_MS,
      application_name: 'agentvpn-registry',
      // A startup parameter: set with the connection, no round trip of its own.
      options,
    });
    // An idle connection that breaks (the server restarted) is dropped by the pool; without a listener it would crash the process.
    pool.on('error', () => undefined);
    try {
      await migrate(() => pool.connect());
    } catch (e) {
      await pool.end().catch(() => undefined);
      if (e instanceof AgentVpnError) throw e;
      throw dbError(e, `cannot open registry database ${redactDbUrl(url)}`);
    }
    return new PgStore(pool, url, instance);
  }

  /** Runs `work` in a transaction, retried when PostgreSQL aborted it for a deadlock or serialization conflict. */
  private async tx<T>(work: (c: Client) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const c = await this.pool.connect();
      try {
        await c.query('BEGIN');
        const out = await work(c);
        await c.query('COMMIT');
        return out;
      } catch (e) {
        await c.query('ROLLBACK').catch(() => undefined);
        if (!RETRYABLE.has((e as { code?: string }).code ?? '') || attempt >= MAX_RETRIES) throw e;
        await new Promise((r) => setTimeout(r, Math.random() * 10 * (attempt + 1)));
      } finally {
        c.release();
      }
    }
  }

  /** One statement, its own transaction, retried like tx() when PostgreSQL aborted it for a deadlock. */
  private async rows<T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> {
    for (let attempt = 0; ; attempt++) {
      try {
        return (await this.pool.query<T>(text, values)).rows;
      } catch (e) {
        if (!RETRYABLE.has((e as { code?: string }).code ?? '') || attempt >= MAX_RETRIES) throw e;
        await new Promise((r) => setTimeout(r, Math.random() * 10 * (attempt + 1)));
      }
    }
  }

  private static async lock(c: Client, cls: number, subject: string): Promise<void> {
    await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [cls, subject]);
  }

  private static async recordAction(c: Client, network: string, action: OperatorAction['action'], id: string | null, now: number, detail: Record<string, unknown> | null = null): Promise<void> {
    await PgStore.lock(c, LOCK.actions, '');
    await c.query('INSERT INTO operator_actions (network, action, id, at, detail) VALUES ($1, $2, $3, $4, $5)', [network, action, id, now, detail && JSON.stringify(detail)]);
  }

  async addToken(t: StoredToken): Promise<void> {
    await this.tx(async (c) => {
      await c.query('INSERT INTO tokens (hash, network, created_at, expires_at, uses_left, tags) VALUES ($1, $2, $3, $4, $5, $6)',
        [t.hash, t.network, t.createdAt, t.expiresAt, t.usesLeft, JSON.stringify(t.tags)]);
      await PgStore.recordAction(c, t.network, 'token', t.hash, t.createdAt, { expiresAt: t.expiresAt, uses: t.usesLeft, tags: t.tags });
    });
  }

  async tokens(network: string, limit: number): Promise<StoredToken[]> {
    const rows = await this.rows<{ hash: string; network: string; created_at: number; expires_at: number | null; uses_left: number | null; tags: string }>(
      'SELECT * FROM tokens WHERE network = $1 ORDER BY created_at DESC LIMIT $2', [network, limit]);
    return rows.map((r) => ({ hash: r.hash, network: r.network, createdAt: r.created_at, expiresAt: r.expires_at, usesLeft: r.uses_left, tags: parseStoredTags(r.tags) }));
  }

  async checkToken(network: string, hash: string, now: number): Promise<TokenCheck> {
    const [row] = await this.rows<{ expires_at: number | null }>(`SELECT expires_at FROM tokens WHERE hash = $1 AND network = $2
      AND (expires_at IS NULL OR expires_at > $3) AND (uses_left IS NULL OR uses_left > 0)`, [hash, network, now]);
    return row ? { ok: true, expiresAt: row.expires_at } : { ok: false };
  }

  /** One statement, its own transaction: a signed read costs one round trip. */
  async useTimestamp(id: string, timestamp: number, now: number): Promise<TimestampResult> {
    const [row] = await this.rows<{ ok: boolean }>('SELECT agentvpn_take($1, $2, $3, $4, $5) AS ok', [id, timestamp, now, MAX_CLOCK_SKEW_MS, WINDOW_SLOTS]);
    return row.ok ? { ok: true } : replayed(id, timestamp);
  }

  /**
   * One statement. A change of online state is written at once (it is an event every instance
   * shows); the last_seen of an agent that stays online waits for the next flush (liveness-behind.ts).
   */
  async setOnline(req: LivenessRequest): Promise<LivenessResult> {
    const [row] = await this.rows<{ r: string }>('SELECT agentvpn_heartbeat($1, $2, $3, $4, $5, $6, $7, $8) AS r',
      [req.network, req.id, req.online, req.lastSeen, req.timestamp, req.now, MAX_CLOCK_SKEW_MS, WINDOW_SLOTS]);
    if (row.r === 'not-found') return { ok: false, code: 'NOT_FOUND', message: `agent ${req.id} has not published a record in network ${req.network}` };
    if (row.r === 'replayed') return replayed(req.id, req.timestamp);
    if (row.r === 'taken' && req.online) this.behind.note(req.network, req.id, req.lastSeen);
    return { ok: true };
  }

  private static async memberOf(c: Client, network: string, id: string): Promise<Member | undefined> {
    const [row] = (await c.query<MemberRow>('SELECT * FROM members WHERE network = $1 AND id = $2', [network, id])).rows;
    return row && toMember(row);
  }

  private static async nameHolder(c: Client, network: string, name: string): Promise<string | undefined> {
    return (await c.query<{ id: string }>('SELECT id FROM members WHERE network = $1 AND name = $2', [network, name])).rows[0]?.id;
  }

  /** One statement (agentvpn_admit, migration 2); a name another instance took meanwhile is NAME_TAKEN. */
  async admit(req: AdmitRequest): Promise<AdmitResult> {
    const { base, size } = poolRange(req.pool);
    let r: AdmitRow;
    try {
      [{ r }] = await this.rows<{ r: AdmitRow }>('SELECT agentvpn_admit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) AS r',
        [req.network, req.id, req.name, req.tokenHash, req.timestamp, req.now, formatPrefix(req.pool), base, size, MAX_CLOCK_SKEW_MS, WINDOW_SLOTS]);
    } catch (e) {
      if (isNameConflict(e)) return nameTaken(req.name, req.network);
      throw e;
    }
    if (r.code === 'ok') {
      const member: Member = { id: req.id, network: req.network, name: req.name, ipv4: r.ipv4!, joinedAt: r.joined_at!, tags: parseStoredTags(r.tags!) };
      return { ok: true, member, created: r.created!, usedUpToken: r.used_up ? req.tokenHash : null };
    }
    return { ok: false, code: r.code, message: admitRefusal(r.code, req) };
  }

  async putRecord(network: string, signed: SignedRecord, now: number, chain?: StoredKeyChain): Promise<PutRecordResult> {
    const r = signed.record;
    if (!chain) return this.putRecordAlone(network, signed, now);
    try {
      return await this.tx(async (c): Promise<PutRecordResult> => {
        await PgStore.lock(c, LOCK.agent, r.id);
        const member = await PgStore.memberOf(c, network, r.id);
        if (!member) return { ok: false, code: 'NOT_JOINED', message: `agent ${r.id} has not joined network ${network}` };
        if (member.ipv4 !== r.ipv4) {
          return { ok: false, code: 'ADDRESS_MISMATCH', message: `record ipv4 ${r.ipv4} is not the address allocated to this agent (${member.ipv4})` };
        }
        if (member.name !== r.name) {
          if ((await PgStore.nameHolder(c, network, r.name)) !== undefined) return nameTaken(r.name, network);
          await c.query('UPDATE members SET name = $1 WHERE network = $2 AND id = $3', [r.name, network, r.id]);
        }
        const [stored] = (await c.query<{ seq: number }>('SELECT seq FROM records WHERE network = $1 AND id = $2', [network, r.id])).rows;
        if (stored && r.seq <= stored.seq) {
          return { ok: false, code: 'STALE_RECORD', message: `record seq ${r.seq} is not newer than the stored seq ${stored.seq}` };
        }
        const [held] = (await c.query<{ chain: string }>('SELECT chain FROM key_chains WHERE id = $1', [r.id])).rows;
        if (held && !extendsChain(JSON.parse(held.chain) as unknown[], chain.chain)) {
          return { ok: false, code: 'CHAIN_FORK', message: `the key chain of agent ${r.id} does not extend the one the registry holds (it is shorter, forks or replaces it)` };
        }
        await c.query(`INSERT INTO key_chains (id, chain, key) VALUES ($1, $2, $3)
          ON CONFLICT (id) DO UPDATE SET chain = excluded.chain, key = excluded.key`, [r.id, JSON.stringify(chain.chain), chain.key]);
        await c.query(`INSERT INTO records (id, network, json, signature, seq, last_seen, online) VALUES ($1, $2, $3, $4, $5, $6, true)
          ON CONFLICT (network, id) DO UPDATE SET json = excluded.json, signature = excluded.signature, seq = excluded.seq,
            last_seen = excluded.last_seen, online = true`, [r.id, network, JSON.stringify(r), signed.signature, r.seq, now]);
        return { ok: true, member: { ...member, name: r.name } };
      });
    } catch (e) {
      if (isNameConflict(e)) return nameTaken(r.name, network);
      throw e;
    }
  }

  /** A publish that brings no new key chain: one statement (agentvpn_put_record, migration 2). */
  private async putRecordAlone(network: string, signed: SignedRecord, now: number): Promise<PutRecordResult> {
    const r = signed.record;
    let row: { code: string; ipv4?: string; joined_at?: number; tags?: string; seq?: number };
    try {
      [{ row }] = await this.rows<{ row: typeof row }>('SELECT agentvpn_put_record($1, $2, $3, $4, $5, $6, $7, $8) AS row',
        [network, r.id, r.name, r.ipv4, r.seq, JSON.stringify(r), signed.signature, now]);
    } catch (e) {
      if (isNameConflict(e)) return nameTaken(r.name, network);
      throw e;
    }
    switch (row.code) {
      case 'ok': return { ok: true, member: { id: r.id, network, name: r.name, ipv4: row.ipv4!, joinedAt: row.joined_at!, tags: parseStoredTags(row.tags!) } };
      case 'NOT_JOINED': return { ok: false, code: 'NOT_JOINED', message: `agent ${r.id} has not joined network ${network}` };
      case 'ADDRESS_MISMATCH': return { ok: false, code: 'ADDRESS_MISMATCH', message: `record ipv4 ${r.ipv4} is not the address allocated to this agent (${row.ipv4})` };
      case 'NAME_TAKEN': return nameTaken(r.name, network);
      default: return { ok: false, code: 'STALE_RECORD', message: `record seq ${r.seq} is not newer than the stored seq ${row.seq}` };
    }
  }

  /**
   * Liveness the sweep found, in one statement. A row heard from more recently (a heartbeat that
   * reached another instance) keeps its newer state: an instance only writes what it saw last.
   */
  async setLiveness(updates: Array<{ network: string; id: string; lastSeen: number; online: boolean }>): Promise<void> {
    if (updates.length === 0) return;
    const sorted = [...updates].sort(byRow);
    await this.rows(`UPDATE records r SET last_seen = u.last_seen, online = u.online
      FROM unnest($1::text[], $2::text[], $3::bigint[], $4::boolean[]) AS u(network, id, last_seen, online)
      WHERE r.network = u.network AND r.id = u.id AND r.last_seen <= u.last_seen`,
    [sorted.map((u) => u.network), sorted.map((u) => u.id), sorted.map((u) => u.lastSeen), sorted.map((u) => u.online)]);
  }

  /**
   * The write-behind's batch: heartbeats newer than the row, so the agent is online (a sweep here
   * or on another instance that marked it offline meanwhile saw an older last_seen).
   */
  private async writeLastSeen(updates: LastSeenUpdate[]): Promise<void> {
    const sorted = [...updates].sort(byRow);
    await this.rows(`UPDATE records r SET last_seen = u.last_seen, online = true
      FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(network, id, last_seen)
      WHERE r.network = u.network AND r.id = u.id AND r.last_seen < u.last_seen`,
    [sorted.map((u) => u.network), sorted.map((u) => u.id), sorted.map((u) => u.lastSeen)]);
  }

  async keyChains(): Promise<StoredKeyChain[]> {
    return (await this.rows<{ id: string; chain: string; key: string }>('SELECT id, chain, key FROM key_chains'))
      .map((r) => ({ id: r.id, chain: JSON.parse(r.chain) as unknown[], key: r.key }));
  }

  async removeMember(network: string, idOrName: string, block: boolean, now: number): Promise<RemoveResult> {
    return this.tx(async (c): Promise<RemoveResult> => {
      const [found] = (await c.query<{ id: string }>('SELECT id FROM members WHERE network = $1 AND (id = $2 OR name = $2)', [network, idOrName])).rows;
      await PgStore.lock(c, LOCK.agent, found?.id ?? idOrName);
      // Re-read under the lock: a publish or rename may have committed meanwhile.
      const [row] = found ? (await c.query<MemberRow>('SELECT * FROM members WHERE network = $1 AND id = $2', [network, found.id])).rows : [];
      if (!row && !(block && publicKeyOfAgentId(idOrName) !== null)) {
        return { ok: false, code: 'NOT_FOUND', message: `no agent "${idOrName.slice(0, 80)}" in network ${network}` };
      }
      const id = row?.id ?? idOrName;
      const name = row?.name ?? '';
      if (row) {
        await c.query('DELETE FROM records WHERE network = $1 AND id = $2', [network, id]);
        await c.query('DELETE FROM members WHERE network = $1 AND id = $2', [network, id]);
      }
      if (block) {
        await c.query('INSERT INTO blocked (network, id, name, blocked_at) VALUES ($1, $2, $3, $4) ON CONFLICT (network, id) DO NOTHING', [network, id, name, now]);
      }
      await PgStore.recordAction(c, network, block ? 'block' : 'remove', id, now, { name, wasMember: row !== undefined });
      return { ok: true, id, name, wasMember: row !== undefined };
    });
  }

  async blocked(): Promise<BlockedAgent[]> {
    return (await this.rows<{ network: string; id: string; name: string; blocked_at: number }>('SELECT * FROM blocked'))
      .map((r) => ({ network: r.network, id: r.id, name: r.name, blockedAt: r.blocked_at }));
  }

  async setPolicy(network: string, text: string, now: number): Promise<StoredPolicy> {
    return this.tx(async (c) => {
      await PgStore.lock(c, LOCK.policy, network);
      const [row] = (await c.query<{ version: number }>('SELECT version FROM policies WHERE network = $1', [network])).rows;
      const version = (row?.version ?? 0) + 1;
      await c.query(`INSERT INTO policies (network, version, text, set_at) VALUES ($1, $2, $3, $4)
        ON CONFLICT (network) DO UPDATE SET version = excluded.version, text = excluded.text, set_at = excluded.set_at`, [network, version, text, now]);
      await PgStore.recordAction(c, network, 'policy', null, now, { version, sha256: createHash('sha256').update(text, 'utf8').digest('hex') });
      return { network, version, text, setAt: now };
    });
  }

  async policies(): Promise<StoredPolicy[]> {
    return (await this.rows<{ network: string; version: number; text: string; set_at: number }>('SELECT * FROM policies'))
      .map((r) => ({ network: r.network, version: r.version, text: r.text, setAt: r.set_at }));
  }

  async actionsSince(seq: number, limit: number): Promise<OperatorAction[]> {
    return (await this.rows<Omit<OperatorAction, 'detail'> & { detail: string | null }>(
      'SELECT seq, network, action, id, at, detail FROM operator_actions WHERE seq > $1 ORDER BY seq LIMIT $2', [seq, limit]))
      .map((a) => ({ ...a, detail: a.detail === null ? null : (JSON.parse(a.detail) as Record<string, unknown>) }));
  }

  async lastActionSeq(): Promise<number> {
    return (await this.rows<{ seq: number | null }>('SELECT MAX(seq) AS seq FROM operator_actions'))[0].seq ?? 0;
  }

  async addAdminToken(hash: string, now: number): Promise<void> {
    await this.tx(async (c) => {
      await c.query('INSERT INTO admin_tokens (hash, created_at) VALUES ($1, $2)', [hash, now]);
      await PgStore.recordAction(c, '', 'admin-token', hash, now);
    });
  }

  async adminTokenHashes(): Promise<string[]> {
    return (await this.rows<{ hash: string }>('SELECT hash FROM admin_tokens')).map((r) => r.hash);
  }

  async members(): Promise<Member[]> {
    return (await this.rows<MemberRow>('SELECT * FROM members')).map(toMember);
  }

  async records(): Promise<StoredRecord[]> {
    return (await this.rows<RecordRow>('SELECT id, network, json, signature, last_seen, online FROM records')).map(toRecord);
  }

  /** One member, for the change feed (pg-change-feed.ts); undefined when it is gone. */
  async member(network: string, id: string): Promise<Member | undefined> {
    const [row] = await this.rows<MemberRow>('SELECT * FROM members WHERE network = $1 AND id = $2', [network, id]);
    return row && toMember(row);
  }

  /** The change feed's HMAC key (migration 3), or null when this role may not read it. */
  async feedKey(): Promise<Buffer | null> {
    const [row] = await this.rows<{ k: Buffer | null }>(`SELECT CASE WHEN has_table_privilege('feed_key', 'SELECT') THEN (SELECT k FROM feed_key) END AS k`);
    return row?.k ?? null;
  }

  /** One agent's record with its member row and key chain, for the change feed; undefined when it is gone. */
  async agent(network: string, id: string): Promise<{ member: Member; record: StoredRecord; chain: StoredKeyChain | null } | undefined> {
    const [row] = await this.rows<MemberRow & { json: string; signature: string; last_seen: number; online: boolean; chain: string | null; key: string | null }>(
      `SELECT m.*, r.json, r.signature, r.last_seen, r.online, k.chain, k.key FROM members m JOIN records r USING (network, id)
       LEFT JOIN key_chains k ON k.id = m.id WHERE m.network = $1 AND m.id = $2`, [network, id]);
    if (!row) return undefined;
    return {
      member: toMember(row), record: toRecord(row),
      chain: row.chain === null ? null : { id, chain: JSON.parse(row.chain) as unknown[], key: row.key! },
    };
  }

  async auditHead(agent: string): Promise<AuditHead> {
    const [row] = await this.rows<AuditLogRow>('SELECT size, frontier, cosigned FROM audit_logs WHERE agent = $1', [agent]);
    return row ? toAuditHead(agent, row) : { agent, size: 0, frontier: [], cosigned: null };
  }

  async auditHeads(): Promise<AuditHead[]> {
    return (await this.rows<AuditLogRow & { agent: string }>('SELECT agent, size, frontier, cosigned FROM audit_logs ORDER BY agent')).map((r) => toAuditHead(r.agent, r));
  }

  async appendAudit(a: AuditAppend): Promise<AuditAppendResult> {
    return this.tx(async (c): Promise<AuditAppendResult> => {
      await PgStore.lock(c, LOCK.audit, a.agent);
      const [held] = (await c.query<{ size: number; cosigned: string | null }>('SELECT size, cosigned FROM audit_logs WHERE agent = $1', [a.agent])).rows;
      // Another ship of the same agent got in first (checked under the agent's audit lock, so no two append at one size).
      if ((held?.size ?? 0) !== a.from) return { ok: false, code: 'AUDIT_GAP', held: held?.size ?? 0, cosigned: held?.cosigned ?? null };
      await c.query(`INSERT INTO audit_entries (agent, seq, line, leaf_hash) SELECT $1, s, l, h FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(s, l, h)`,
        [a.agent, a.entries.map((_, i) => a.from + i), a.entries.map((e) => e.line), a.entries.map((e) => e.leafHash.toString('base64'))]);
      const size = a.from + a.entries.length;
      await c.query('INSERT INTO audit_checkpoints (agent, size, note, stored_at) VALUES ($1, $2, $3, $4)', [a.agent, size, a.cosigned, a.now]);
      await c.query(`INSERT INTO audit_logs (agent, size, frontier, cosigned, updated_at) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (agent) DO UPDATE SET size = excluded.size, frontier = excluded.frontier, cosigned = excluded.cosigned, updated_at = excluded.updated_at`,
      [a.agent, size, JSON.stringify(a.frontier.map((h) => h.toString('base64'))), a.cosigned, a.now]);
      return { ok: true };
    });
  }

  async auditEntries(agent: string, from: number, limit: number): Promise<AuditEntryRow[]> {
    return (await this.rows<{ seq: number; line: string; leaf_hash: string }>(
      'SELECT seq, line, leaf_hash FROM audit_entries WHERE agent = $1 AND seq >= $2 ORDER BY seq LIMIT $3', [agent, from, limit]))
      .map((r) => ({ seq: r.seq, line: r.line, leafHash: Buffer.from(r.leaf_hash, 'base64') }));
  }

  async auditCheckpoints(agent: string, afterSize: number, limit: number): Promise<StoredCheckpoint[]> {
    return (await this.rows<{ size: number; note: string; stored_at: number }>(
      'SELECT size, note, stored_at FROM audit_checkpoints WHERE agent = $1 AND size > $2 ORDER BY size LIMIT $3', [agent, afterSize, limit]))
      .map((r) => ({ agent, size: r.size, note: r.note, storedAt: r.stored_at }));
  }

  async addAuditRefusal(r: Omit<AuditRefusal, 'id'>): Promise<number> {
    return this.tx(async (c) => {
      await PgStore.lock(c, LOCK.refusals, '');
      return (await c.query<{ id: number }>(`INSERT INTO audit_refusals (agent, network, at, code, reason, held, size, checkpoint)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`, [r.agent, r.network, r.at, r.code, r.reason, r.held, r.size, r.checkpoint])).rows[0].id;
    });
  }

  async auditRefusals(afterId: number, limit: number): Promise<AuditRefusal[]> {
    return this.rows<AuditRefusal>('SELECT id, agent, network, at, code, reason, held, size, checkpoint FROM audit_refusals WHERE id > $1 ORDER BY id LIMIT $2', [afterId, limit]);
  }

  async getMeta(key: string): Promise<string | null> {
    return (await this.rows<{ value: string }>('SELECT value FROM meta WHERE key = $1', [key]))[0]?.value ?? null;
  }

  async setMeta(key: string, value: string): Promise<void> {
    await this.pool.query('INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.behind.close();
    await this.pool.end();
  }
}

/**
 * The URL without its own `options` parameter, and those options followed by `option`: node-postgres
 * lets a URL's parameters override the pool's, so a URL with `?options=-c search_path=…` would
 * otherwise drop ours. (Not `new URL()`: a unix-socket URL, `postgres://user@/db?host=/run`, is not one.)
 */
export function withStartupOption(url: string, option: string): { connectionString: string; options: string } {
  const q = url.indexOf('?');
  if (q < 0) return { connectionString: url, options: option };
  const params = new URLSearchParams(url.slice(q + 1));
  const own = params.get('options');
  if (own === null) return { connectionString: url, options: option };
  params.delete('options');
  const rest = params.toString();
  return { connectionString: url.slice(0, q) + (rest ? `?${rest}` : ''), options: `${own} ${option}` };
}
