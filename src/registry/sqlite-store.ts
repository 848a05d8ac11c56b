import { createHash } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { AgentVpnError } from '../errors.js';
import { formatPrefix } from '../ip/prefix.js';
import type { SignedRecord } from './record.js';
import { extendsChain } from './key-chain.js';
import { EMPTY_WINDOW, isReplayed, takeTimestamp, type ReplayWindow } from './replay-window.js';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import {
  LOGGED_ACTIONS_KEY, allocateFromPool, type AdmitRequest, type AdmitResult, type AuditAppend, type AuditAppendResult, type AuditEntryRow, type AuditHead, type AuditRefusal,
  type BlockedAgent, type StoredCheckpoint, type LivenessRequest, type LivenessResult, type Member, type OperatorAction,
  type PutRecordResult, type RegistryStore, type RemoveResult, type StoredKeyChain, type StoredPolicy, type StoredRecord, type StoredToken,
  type TimestampResult, type TokenCheck,
} from './store.js';
import { parseStoredTags } from './tags.js';

/**
 * 2: replay_windows (signed timestamps taken, per agent). A version-1 registry must not open it: it would accept replays.
 * 3: tags on tokens and members, blocked agents, policies, operator actions, admin tokens, key chains. A
 *    version-2 registry must not open it: it would let blocked agents re-join and ignore rotations.
 * 4: agents' audit logs (audit_*), operator actions' detail and token actions. A version-3 registry must
 *    not open it: it would act without writing the registry's audit log.
 */
const SCHEMA_VERSION = 4;

/**
 * Agents' audit logs. Only INTEGER and TEXT columns (hashes in base64), so a PostgreSQL store can
 * copy the schema as is (BIGINT for INTEGER; the triggers become a rule or trigger function).
 * Entries, checkpoints and refusals are append-only: the triggers refuse any UPDATE or DELETE, so
 * no code path can rewrite them (someone with the file can still drop the triggers: that is what
 * \`registry audit verify\` finds).
 */
const AUDIT_SCHEMA = `
CREATE TABLE IF NOT EXISTS audit_logs (
  agent      TEXT PRIMARY KEY,
  size       INTEGER NOT NULL,
  frontier   TEXT NOT NULL,
  cosigned   TEXT,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_entries (
  agent     TEXT NOT NULL,
  seq       INTEGER NOT NULL,
  line      TEXT NOT NULL,
  leaf_hash TEXT NOT NULL,
  PRIMARY KEY (agent, seq)
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
  agent     TEXT NOT NULL,
  size      INTEGER NOT NULL,
  note      TEXT NOT NULL,
  stored_at INTEGER NOT NULL,
  PRIMARY KEY (agent, size)
);
CREATE TABLE IF NOT EXISTS audit_refusals (
  id         INTEGER PRIMARY KEY,
  agent      TEXT NOT NULL,
  network    TEXT NOT NULL,
  at         INTEGER NOT NULL,
  code       TEXT NOT NULL,
  reason     TEXT NOT NULL,
  held       INTEGER NOT NULL,
  size       INTEGER,
  checkpoint TEXT
);
${['audit_entries', 'audit_checkpoints', 'audit_refusals'].map((t) => `
CREATE TRIGGER IF NOT EXISTS ${t}_append_only_update BEFORE UPDATE ON ${t} BEGIN SELECT RAISE(ABORT, '${t} is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ${t}_append_only_delete BEFORE DELETE ON ${t} BEGIN SELECT RAISE(ABORT, '${t} is append-only'); END;`).join('')}
`;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
  hash       TEXT PRIMARY KEY,
  network    TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER,
  uses_left  INTEGER,
  tags       TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS members (
  id        TEXT NOT NULL,
  network   TEXT NOT NULL,
  name      TEXT NOT NULL,
  ipv4      TEXT NOT NULL,
  joined_at INTEGER NOT NULL,
  tags      TEXT NOT NULL DEFAULT '[]',
  PRIMARY KEY (network, id),
  UNIQUE (network, name),
  UNIQUE (network, ipv4)
);
CREATE TABLE IF NOT EXISTS pools (
  network    TEXT NOT NULL,
  pool       TEXT NOT NULL,
  next_index INTEGER NOT NULL,
  PRIMARY KEY (network, pool)
);
CREATE TABLE IF NOT EXISTS records (
  id        TEXT NOT NULL,
  network   TEXT NOT NULL,
  json      TEXT NOT NULL,
  signature TEXT NOT NULL,
  seq       INTEGER NOT NULL,
  last_seen INTEGER NOT NULL,
  online    INTEGER NOT NULL DEFAULT 1,
  PRIMARY KEY (network, id),
  FOREIGN KEY (network, id) REFERENCES members (network, id)
);
CREATE TABLE IF NOT EXISTS replay_windows (
  id    TEXT PRIMARY KEY,
  floor INTEGER NOT NULL,
  used  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blocked (
  network    TEXT NOT NULL,
  id         TEXT NOT NULL,
  name       TEXT NOT NULL,
  blocked_at INTEGER NOT NULL,
  PRIMARY KEY (network, id)
);
CREATE TABLE IF NOT EXISTS policies (
  network TEXT PRIMARY KEY,
  version INTEGER NOT NULL,
  text    TEXT NOT NULL,
  set_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS operator_actions (
  seq     INTEGER PRIMARY KEY AUTOINCREMENT,
  network TEXT NOT NULL,
  action  TEXT NOT NULL,
  id      TEXT,
  at      INTEGER NOT NULL,
  detail  TEXT
);
CREATE TABLE IF NOT EXISTS admin_tokens (
  hash       TEXT PRIMARY KEY,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_chains (
  id    TEXT PRIMARY KEY,
  chain TEXT NOT NULL,
  key   TEXT NOT NULL
);
${AUDIT_SCHEMA}
`;

/** Columns version 3 added to tables that version 2 already had (CREATE TABLE IF NOT EXISTS leaves those alone). */
const V3_COLUMNS = [
  "ALTER TABLE tokens ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'",
  "ALTER TABLE members ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'",
];
/** Columns version 4 added to a table version 3 had (a version-2 database gets the table whole, from SCHEMA). */
const V4_COLUMNS = [{ table: 'operator_actions', column: 'detail', sql: 'ALTER TABLE operator_actions ADD COLUMN detail TEXT' }];

interface MemberRow { id: string; network: string; name: string; ipv4: string; joined_at: number; tags: string }
interface RecordRow { id: string; network: string; json: string; signature: string; last_seen: number; online: number }

function toMember(r: MemberRow): Member {
  return { id: r.id, network: r.network, name: r.name, ipv4: r.ipv4, joinedAt: r.joined_at, tags: parseStoredTags(r.tags) };
}

/** Creates the database file with mode 0600 before SQLite opens it (its -wal and -shm files copy that mode). */
function createPrivateFile(path: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
  try {
    chmodSync(path, 0o600);
  } catch {
    // Not our file (another user runs the registry): leave its mode alone.
  }
}

/** The embedded registry store: one SQLite file in WAL mode, safe against crashes. */
export class SqliteStore implements RegistryStore {
  private readonly db: Database.Database;
  private readonly statements = new Map<string, Database.Statement>();

  constructor(readonly path: string) {
    try {
      createPrivateFile(path);
      this.db = new Database(path);
      this.db.pragma('journal_mode = WAL');
      // NORMAL in WAL mode: a power cut may lose the last commits, never corrupt the database.
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('foreign_keys = ON');
      this.db.pragma('busy_timeout = 5000');
      this.migrate();
    } catch (e) {
      if (e instanceof AgentVpnError) throw e;
      throw new AgentVpnError('REGISTRY_DB', `cannot open registry database ${path}: ${(e as Error).message}`,
        'check that the --db path is writable by this user and is an agentvpn registry database', { cause: e });
    }
  }

  /**
   * One transaction wrapper that runs the function it is given, built once: db.transaction()
   * builds four closures and their properties per call (~15 µs, twice per registration).
   */
  private wrapper: Database.Transaction<(fn: () => unknown) => unknown> | null = null;

  /** Runs `fn` in a BEGIN IMMEDIATE transaction (a savepoint when nested): committed, or rolled back if it throws. */
  private immediate<T>(fn: () => T): T {
    this.wrapper ??= this.db.transaction((f: () => unknown) => f());
    return this.wrapper.immediate(fn) as T;
  }

  /** As immediate(), with a deferred BEGIN. */
  private deferred<T>(fn: () => T): T {
    this.wrapper ??= this.db.transaction((f: () => unknown) => f());
    return this.wrapper(fn) as T;
  }

  /** Prepared statements, compiled once each. */
  private sql(text: string): Database.Statement {
    let stmt = this.statements.get(text);
    if (!stmt) {
      stmt = this.db.prepare(text);
      this.statements.set(text, stmt);
    }
    return stmt;
  }

  private migrate(): void {
    this.immediate(() => {
      this.db.exec(SCHEMA);
      const row = this.db.prepare('SELECT value FROM meta WHERE key = ?').get('schema_version') as { value: string } | undefined;
      const version = row ? Number(row.value) : SCHEMA_VERSION;
      if (version > SCHEMA_VERSION) {
        throw new AgentVpnError('REGISTRY_DB_TOO_NEW', `registry database ${this.path} has schema version ${row!.value}, newer than this agentvpn understands (${SCHEMA_VERSION})`,
          'run the newer agentvpn version that wrote it, or restore a backup');
      }
      // Older versions lack tables, which SCHEMA has just created, and the columns added since.
      if (version < 3) for (const sql of V3_COLUMNS) this.db.exec(sql);
      for (const c of version < 4 ? V4_COLUMNS : []) {
        const has = (this.db.prepare(`PRAGMA table_info(${c.table})`).all() as Array<{ name: string }>).some((col) => col.name === c.column);
        if (!has) this.db.exec(c.sql);
      }
      this.db.prepare(`INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(String(SCHEMA_VERSION));
      // The registry's own log starts with this version: actions taken before it are not logged afterwards.
      this.db.prepare(`INSERT INTO meta (key, value) SELECT ?, CAST(COALESCE(MAX(seq), 0) AS TEXT) FROM operator_actions WHERE true ON CONFLICT (key) DO NOTHING`).run(LOGGED_ACTIONS_KEY);
    });
  }

  async addToken(t: StoredToken): Promise<void> {
    this.immediate(() => {
      this.sql('INSERT INTO tokens (hash, network, created_at, expires_at, uses_left, tags) VALUES (?, ?, ?, ?, ?, ?)')
        .run(t.hash, t.network, t.createdAt, t.expiresAt, t.usesLeft, JSON.stringify(t.tags));
      this.recordAction(t.network, 'token', t.hash, t.createdAt, { expiresAt: t.expiresAt, uses: t.usesLeft, tags: t.tags });
    });
  }

  async tokens(network: string, limit: number): Promise<StoredToken[]> {
    return (this.sql('SELECT * FROM tokens WHERE network = ? ORDER BY created_at DESC LIMIT ?').all(network, limit) as Array<{
      hash: string; network: string; created_at: number; expires_at: number | null; uses_left: number | null; tags: string;
    }>).map((r) => ({ hash: r.hash, network: r.network, createdAt: r.created_at, expiresAt: r.expires_at, usesLeft: r.uses_left, tags: parseStoredTags(r.tags) }));
  }

  async checkToken(network: string, hash: string, now: number): Promise<TokenCheck> {
    const row = this.sql(`SELECT expires_at FROM tokens WHERE hash = ? AND network = ? AND (expires_at IS NULL OR expires_at > ?)
      AND (uses_left IS NULL OR uses_left > 0)`).get(hash, network, now) as { expires_at: number | null } | undefined;
    return row ? { ok: true, expiresAt: row.expires_at } : { ok: false };
  }

  /** Takes a signed timestamp of agent `id`; false when it was taken before (inside the caller's transaction). */
  private take(id: string, timestamp: number, now: number): boolean {
    const row = this.sql('SELECT floor, used FROM replay_windows WHERE id = ?').get(id) as { floor: number; used: string } | undefined;
    const window: ReplayWindow = row ? { floor: row.floor, used: JSON.parse(row.used) as number[] } : EMPTY_WINDOW;
    if (isReplayed(window, timestamp)) return false;
    const next = takeTimestamp(window, timestamp, now);
    this.sql(`INSERT INTO replay_windows (id, floor, used) VALUES (?, ?, ?)
      ON CONFLICT (id) DO UPDATE SET floor = excluded.floor, used = excluded.used`).run(id, next.floor, JSON.stringify(next.used));
    return true;
  }

  async useTimestamp(id: string, timestamp: number, now: number): Promise<TimestampResult> {
    const taken = this.immediate(() => this.take(id, timestamp, now));
    return taken ? { ok: true } : replayed(id, timestamp);
  }

  async setOnline(req: LivenessRequest): Promise<LivenessResult> {
    return this.immediate((): LivenessResult => {
      if (!this.sql('SELECT 1 FROM records WHERE network = ? AND id = ?').get(req.network, req.id)) {
        return { ok: false, code: 'NOT_FOUND', message: `agent ${req.id} has not published a record in network ${req.network}` };
      }
      if (!this.take(req.id, req.timestamp, req.now)) return replayed(req.id, req.timestamp);
      this.sql('UPDATE records SET last_seen = MAX(last_seen, ?), online = ? WHERE network = ? AND id = ?').run(req.lastSeen, req.online ? 1 : 0, req.network, req.id);
      return { ok: true };
    });
  }

  private member(network: string, id: string): Member | undefined {
    const row = this.sql('SELECT * FROM members WHERE network = ? AND id = ?').get(network, id) as MemberRow | undefined;
    return row && toMember(row);
  }

  private nameHolder(network: string, name: string): string | undefined {
    return (this.sql('SELECT id FROM members WHERE network = ? AND name = ?').get(network, name) as { id: string } | undefined)?.id;
  }

  /**
   * Takes one use of a token: 'used-up' when that was its last, with the token's tags; null when
   * it is unknown, for another network, expired or used up.
   */
  private useToken(network: string, hash: string, now: number): { usedUp: boolean; tags: string } | null {
    // One statement: the hash is the key, so at most one row is taken and returned.
    const left = this.sql(`UPDATE tokens SET uses_left = uses_left - 1
      WHERE hash = ? AND network = ? AND (expires_at IS NULL OR expires_at > ?) AND (uses_left IS NULL OR uses_left > 0)
      RETURNING uses_left, tags`).get(hash, network, now) as { uses_left: number | null; tags: string } | undefined;
    if (!left) return null;
    return { usedUp: left.uses_left === 0, tags: left.tags };
  }

  private isBlocked(network: string, id: string): boolean {
    return this.sql('SELECT 1 FROM blocked WHERE network = ? AND id = ?').get(network, id) !== undefined;
  }

  private recordAction(network: string, action: OperatorAction['action'], id: string | null, now: number, detail: Record<string, unknown> | null = null): void {
    this.sql('INSERT INTO operator_actions (network, action, id, at, detail) VALUES (?, ?, ?, ?, ?)').run(network, action, id, now, detail && JSON.stringify(detail));
  }

  private allocate(req: AdmitRequest): string | null {
    const pool = formatPrefix(req.pool);
    const row = this.sql('SELECT next_index FROM pools WHERE network = ? AND pool = ?').get(req.network, pool) as { next_index: number } | undefined;
    let index = row?.next_index ?? 1;
    for (;;) {
      const got = allocateFromPool(req.pool, index);
      if (!got) return null;
      index = got.next;
      // An address taken under another pool string of this network (the pool was changed) is skipped, not handed out twice.
      if (this.sql('SELECT 1 FROM members WHERE network = ? AND ipv4 = ?').get(req.network, got.ipv4) !== undefined) continue;
      this.sql(`INSERT INTO pools (network, pool, next_index) VALUES (?, ?, ?)
        ON CONFLICT (network, pool) DO UPDATE SET next_index = excluded.next_index`).run(req.network, pool, index);
      return got.ipv4;
    }
  }

  async admit(req: AdmitRequest): Promise<AdmitResult> {
    try {
      return this.admitTransaction(req);
    } catch (e) {
      if (e instanceof Replayed) return replayed(req.id, req.timestamp);
      if (!(e instanceof PoolExhausted)) throw e;
      return { ok: false, code: 'POOL_EXHAUSTED', message: `the address pool ${formatPrefix(req.pool)} of network ${req.network} has no free IPv4 address left` };
    }
  }

  private admitTransaction(req: AdmitRequest): AdmitResult {
    return this.immediate((): AdmitResult => {
      if (this.isBlocked(req.network, req.id)) return { ok: false, code: 'BLOCKED', message: `agent ${req.id} is blocked in network ${req.network}` };
      const known = this.member(req.network, req.id);
      if (known && !this.take(req.id, req.timestamp, req.now)) return replayed(req.id, req.timestamp);
      const holder = this.nameHolder(req.network, req.name);
      if (holder !== undefined && holder !== req.id) {
        return { ok: false, code: 'NAME_TAKEN', message: `name "${req.name}" is taken by another agent in network ${req.network}` };
      }
      if (known) {
        if (known.name !== req.name) this.sql('UPDATE members SET name = ? WHERE network = ? AND id = ?').run(req.name, req.network, req.id);
        return { ok: true, member: { ...known, name: req.name }, created: false, usedUpToken: null };
      }
      const use = req.tokenHash === null ? null : this.useToken(req.network, req.tokenHash, req.now);
      if (use === null) {
        return { ok: false, code: 'BAD_TOKEN', message: req.tokenHash === null
          ? `a join token is needed to join network ${req.network}`
          : `the join token is not valid for network ${req.network} (unknown, expired or used up)` };
      }
      const ipv4 = this.allocate(req);
      // Throwing rolls the transaction back, so the token's use is given back.
      if (ipv4 === null) throw new PoolExhausted();
      const member: Member = { id: req.id, network: req.network, name: req.name, ipv4, joinedAt: req.now, tags: parseStoredTags(use.tags) };
      this.sql('INSERT INTO members (id, network, name, ipv4, joined_at, tags) VALUES (?, ?, ?, ?, ?, ?)')
        .run(member.id, member.network, member.name, member.ipv4, member.joinedAt, JSON.stringify(member.tags));
      // An agent that is already a member elsewhere has a window; taking is then a replay check too.
      if (!this.take(req.id, req.timestamp, req.now)) throw new Replayed();
      return { ok: true, member, created: true, usedUpToken: use.usedUp ? req.tokenHash : null };
    });
  }

  async putRecord(network: string, signed: SignedRecord, now: number, chain?: StoredKeyChain): Promise<PutRecordResult> {
    const r = signed.record;
    return this.immediate((): PutRecordResult => {
      const member = this.member(network, r.id);
      if (!member) return { ok: false, code: 'NOT_JOINED', message: `agent ${r.id} has not joined network ${network}` };
      if (member.ipv4 !== r.ipv4) {
        return { ok: false, code: 'ADDRESS_MISMATCH', message: `record ipv4 ${r.ipv4} is not the address allocated to this agent (${member.ipv4})` };
      }
      if (member.name !== r.name) {
        const holder = this.nameHolder(network, r.name);
        if (holder !== undefined) return { ok: false, code: 'NAME_TAKEN', message: `name "${r.name}" is taken by another agent in network ${network}` };
        this.sql('UPDATE members SET name = ? WHERE network = ? AND id = ?').run(r.name, network, r.id);
      }
      const stored = this.sql('SELECT seq FROM records WHERE network = ? AND id = ?').get(network, r.id) as { seq: number } | undefined;
      if (stored && r.seq <= stored.seq) {
        return { ok: false, code: 'STALE_RECORD', message: `record seq ${r.seq} is not newer than the stored seq ${stored.seq}` };
      }
      if (chain) {
        const held = this.sql('SELECT chain FROM key_chains WHERE id = ?').get(r.id) as { chain: string } | undefined;
        if (held && !extendsChain(JSON.parse(held.chain) as unknown[], chain.chain)) {
          return { ok: false, code: 'CHAIN_FORK', message: `the key chain of agent ${r.id} does not extend the one the registry holds (it is shorter, forks or replaces it)` };
        }
        this.sql(`INSERT INTO key_chains (id, chain, key) VALUES (?, ?, ?)
          ON CONFLICT (id) DO UPDATE SET chain = excluded.chain, key = excluded.key`).run(r.id, JSON.stringify(chain.chain), chain.key);
      }
      this.sql(`INSERT INTO records (id, network, json, signature, seq, last_seen, online) VALUES (?, ?, ?, ?, ?, ?, 1)
        ON CONFLICT (network, id) DO UPDATE SET json = excluded.json, signature = excluded.signature, seq = excluded.seq,
          last_seen = excluded.last_seen, online = 1`)
        .run(r.id, network, JSON.stringify(r), signed.signature, r.seq, now);
      return { ok: true, member: { ...member, name: r.name } };
    });
  }

  async setLiveness(updates: Array<{ network: string; id: string; lastSeen: number; online: boolean }>): Promise<void> {
    const stmt = this.sql('UPDATE records SET last_seen = ?, online = ? WHERE network = ? AND id = ?');
    this.deferred(() => {
      for (const u of updates) stmt.run(u.lastSeen, u.online ? 1 : 0, u.network, u.id);
    });
  }

  async keyChains(): Promise<StoredKeyChain[]> {
    return (this.sql('SELECT id, chain, key FROM key_chains').all() as Array<{ id: string; chain: string; key: string }>)
      .map((r) => ({ id: r.id, chain: JSON.parse(r.chain) as unknown[], key: r.key }));
  }

  async removeMember(network: string, idOrName: string, block: boolean, now: number): Promise<RemoveResult> {
    return this.immediate((): RemoveResult => {
      const row = (this.sql('SELECT * FROM members WHERE network = ? AND (id = ? OR name = ?)').get(network, idOrName, idOrName) as MemberRow | undefined);
      if (!row && !(block && publicKeyOfAgentId(idOrName) !== null)) {
        return { ok: false, code: 'NOT_FOUND', message: `no agent "${idOrName.slice(0, 80)}" in network ${network}` };
      }
      const id = row?.id ?? idOrName;
      const name = row?.name ?? '';
      if (row) {
        this.sql('DELETE FROM records WHERE network = ? AND id = ?').run(network, id);
        this.sql('DELETE FROM members WHERE network = ? AND id = ?').run(network, id);
      }
      if (block) {
        this.sql('INSERT INTO blocked (network, id, name, blocked_at) VALUES (?, ?, ?, ?) ON CONFLICT (network, id) DO NOTHING').run(network, id, name, now);
      }
      this.recordAction(network, block ? 'block' : 'remove', id, now, { name, wasMember: row !== undefined });
      return { ok: true, id, name, wasMember: row !== undefined };
    });
  }

  async blocked(): Promise<BlockedAgent[]> {
    return (this.sql('SELECT * FROM blocked').all() as Array<{ network: string; id: string; name: string; blocked_at: number }>)
      .map((r) => ({ network: r.network, id: r.id, name: r.name, blockedAt: r.blocked_at }));
  }

  async setPolicy(network: string, text: string, now: number): Promise<StoredPolicy> {
    return this.immediate((): StoredPolicy => {
      const row = this.sql('SELECT version FROM policies WHERE network = ?').get(network) as { version: number } | undefined;
      const version = (row?.version ?? 0) + 1;
      this.sql(`INSERT INTO policies (network, version, text, set_at) VALUES (?, ?, ?, ?)
        ON CONFLICT (network) DO UPDATE SET version = excluded.version, text = excluded.text, set_at = excluded.set_at`).run(network, version, text, now);
      this.recordAction(network, 'policy', null, now, { version, sha256: createHash('sha256').update(text, 'utf8').digest('hex') });
      return { network, version, text, setAt: now };
    });
  }

  async policies(): Promise<StoredPolicy[]> {
    return (this.sql('SELECT * FROM policies').all() as Array<{ network: string; version: number; text: string; set_at: number }>)
      .map((r) => ({ network: r.network, version: r.version, text: r.text, setAt: r.set_at }));
  }

  async actionsSince(seq: number, limit: number): Promise<OperatorAction[]> {
    return (this.sql('SELECT seq, network, action, id, at, detail FROM operator_actions WHERE seq > ? ORDER BY seq LIMIT ?').all(seq, limit) as Array<Omit<OperatorAction, 'detail'> & { detail: string | null }>)
      .map((a) => ({ ...a, detail: a.detail === null ? null : (JSON.parse(a.detail) as Record<string, unknown>) }));
  }

  async lastActionSeq(): Promise<number> {
    return (this.sql('SELECT MAX(seq) AS seq FROM operator_actions').get() as { seq: number | null }).seq ?? 0;
  }

  async addAdminToken(hash: string, now: number): Promise<void> {
    this.immediate(() => {
      this.sql('INSERT INTO admin_tokens (hash, created_at) VALUES (?, ?)').run(hash, now);
      this.recordAction('', 'admin-token', hash, now);
    });
  }

  async adminTokenHashes(): Promise<string[]> {
    return (this.sql('SELECT hash FROM admin_tokens').all() as Array<{ hash: string }>).map((r) => r.hash);
  }

  async members(): Promise<Member[]> {
    return (this.sql('SELECT * FROM members').all() as MemberRow[]).map(toMember);
  }

  async records(): Promise<StoredRecord[]> {
    return (this.sql('SELECT id, network, json, signature, last_seen, online FROM records').all() as RecordRow[]).map((r) => ({
      network: r.network, id: r.id, signed: { record: JSON.parse(r.json), signature: r.signature },
      lastSeen: r.last_seen, online: r.online === 1,
    }));
  }

  async auditHead(agent: string): Promise<AuditHead> {
    const row = this.sql('SELECT size, frontier, cosigned FROM audit_logs WHERE agent = ?').get(agent) as AuditLogRow | undefined;
    return row ? toAuditHead(agent, row) : { agent, size: 0, frontier: [], cosigned: null };
  }

  async auditHeads(): Promise<AuditHead[]> {
    return (this.sql('SELECT agent, size, frontier, cosigned FROM audit_logs ORDER BY agent').all() as Array<AuditLogRow & { agent: string }>).map((r) => toAuditHead(r.agent, r));
  }

  async appendAudit(a: AuditAppend): Promise<AuditAppendResult> {
    const insert = this.sql('INSERT INTO audit_entries (agent, seq, line, leaf_hash) VALUES (?, ?, ?, ?)');
    return this.immediate((): AuditAppendResult => {
      const held = this.sql('SELECT size, cosigned FROM audit_logs WHERE agent = ?').get(a.agent) as { size: number; cosigned: string | null } | undefined;
      // Another ship of the same agent got in first (checked in this transaction, so no two append at one size).
      if ((held?.size ?? 0) !== a.from) return { ok: false, code: 'AUDIT_GAP', held: held?.size ?? 0, cosigned: held?.cosigned ?? null };
      a.entries.forEach((e, i) => insert.run(a.agent, a.from + i, e.line, e.leafHash.toString('base64')));
      const size = a.from + a.entries.length;
      this.sql('INSERT INTO audit_checkpoints (agent, size, note, stored_at) VALUES (?, ?, ?, ?)').run(a.agent, size, a.cosigned, a.now);
      this.sql(`INSERT INTO audit_logs (agent, size, frontier, cosigned, updated_at) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (agent) DO UPDATE SET size = excluded.size, frontier = excluded.frontier, cosigned = excluded.cosigned, updated_at = excluded.updated_at`)
        .run(a.agent, size, JSON.stringify(a.frontier.map((h) => h.toString('base64'))), a.cosigned, a.now);
      return { ok: true };
    });
  }

  async auditEntries(agent: string, from: number, limit: number): Promise<AuditEntryRow[]> {
    return (this.sql('SELECT seq, line, leaf_hash FROM audit_entries WHERE agent = ? AND seq >= ? ORDER BY seq LIMIT ?').all(agent, from, limit) as Array<{ seq: number; line: string; leaf_hash: string }>)
      .map((r) => ({ seq: r.seq, line: r.line, leafHash: Buffer.from(r.leaf_hash, 'base64') }));
  }

  async auditCheckpoints(agent: string, afterSize: number, limit: number): Promise<StoredCheckpoint[]> {
    return (this.sql('SELECT size, note, stored_at FROM audit_checkpoints WHERE agent = ? AND size > ? ORDER BY size LIMIT ?').all(agent, afterSize, limit) as Array<{ size: number; note: string; stored_at: number }>)
      .map((r) => ({ agent, size: r.size, note: r.note, storedAt: r.stored_at }));
  }

  async addAuditRefusal(r: Omit<AuditRefusal, 'id'>): Promise<number> {
    return Number(this.sql('INSERT INTO audit_refusals (agent, network, at, code, reason, held, size, checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
      .run(r.agent, r.network, r.at, r.code, r.reason, r.held, r.size, r.checkpoint).lastInsertRowid);
  }

  async auditRefusals(afterId: number, limit: number): Promise<AuditRefusal[]> {
    return this.sql('SELECT id, agent, network, at, code, reason, held, size, checkpoint FROM audit_refusals WHERE id > ? ORDER BY id LIMIT ?').all(afterId, limit) as AuditRefusal[];
  }

  async getMeta(key: string): Promise<string | null> {
    return (this.sql('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value ?? null;
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.sql('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}

interface AuditLogRow { size: number; frontier: string; cosigned: string | null }

function toAuditHead(agent: string, r: AuditLogRow): AuditHead {
  return { agent, size: r.size, frontier: (JSON.parse(r.frontier) as string[]).map((h) => Buffer.from(h, 'base64')), cosigned: r.cosigned };
}

/** Thrown inside the admit transaction so it rolls back (the token's use is given back). */
class PoolExhausted extends Error {}
class Replayed extends Error {}

function replayed(id: string, timestamp: number): { ok: false; code: 'REPLAYED'; message: string } {
  return { ok: false, code: 'REPLAYED', message: `agent ${id} already used the signed timestamp ${timestamp} (a replayed request?)` };
}
