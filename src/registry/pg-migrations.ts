import type { PoolClient } from 'pg';
import { AgentVpnError } from '../errors.js';
import { LOGGED_ACTIONS_KEY } from './store.js';

/**
 * The PostgreSQL registry schema, as numbered migrations. The database records which ran in
 * `schema_version` (one row per migration); each runs in its own transaction under an advisory
 * lock, so instances starting together migrate once. An instance refuses a database whose
 * schema is newer than it knows: it would miss tables and rules the newer one relies on
 * (replay windows, blocks, the audit queue).
 *
 * The tables are SQLite's (sqlite-store.ts) with BIGINT for INTEGER, BOOLEAN for online and
 * BIGSERIAL for the sequences. On top of them:
 * - triggers refuse UPDATE, DELETE and TRUNCATE on the append-only audit tables;
 * - triggers NOTIFY channel `agentvpn_changes` on each change other instances must follow
 *   (pg-change-feed.ts has the payload table; since version 3 they carry the row, name the
 *   writing instance and are authenticated); a NOTIFY is delivered at COMMIT, never for a
 *   rolled-back transaction.
 */

/** The channel every instance LISTENs on (pg-change-feed.ts). */
export const CHANGE_CHANNEL = 'agentvpn_changes';

/** Advisory lock classes (the first key of pg_advisory_xact_lock(int, int)); the second key is hashtext() of the subject. */
export const LOCK = {
  /** Per agent ID: its replay window, membership, record and key chain change one transaction at a time. */
  agent: 1,
  /** Per agent ID: one audit append at a time. */
  audit: 2,
  /** Per network: policy versions. */
  policy: 3,
  /** Global: operator_actions rows commit in seq order, so a reader's cursor (seq > N) never skips a late commit. */
  actions: 4,
  /** Global: the same for audit_refusals ids (the console reads them by cursor). */
  refusals: 5,
  /** Global: migrations. */
  migrate: 6,
} as const;

interface Migration {
  version: number;
  sql: string;
}

const APPEND_ONLY = ['audit_entries', 'audit_checkpoints', 'audit_refusals'];

const V1 = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tokens (
  hash TEXT PRIMARY KEY, network TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT, uses_left BIGINT,
  tags TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX tokens_by_network ON tokens (network, created_at DESC);
CREATE TABLE members (
  id TEXT NOT NULL, network TEXT NOT NULL, name TEXT NOT NULL, ipv4 TEXT NOT NULL, joined_at BIGINT NOT NULL,
  tags TEXT NOT NULL DEFAULT '[]',
  PRIMARY KEY (network, id),
  CONSTRAINT members_name_unique UNIQUE (network, name),
  CONSTRAINT members_ipv4_unique UNIQUE (network, ipv4)
);
CREATE TABLE pools (network TEXT NOT NULL, pool TEXT NOT NULL, next_index BIGINT NOT NULL, PRIMARY KEY (network, pool));
CREATE TABLE records (
  id TEXT NOT NULL, network TEXT NOT NULL, json TEXT NOT NULL, signature TEXT NOT NULL, seq BIGINT NOT NULL,
  last_seen BIGINT NOT NULL, online BOOLEAN NOT NULL DEFAULT true,
  PRIMARY KEY (network, id),
  FOREIGN KEY (network, id) REFERENCES members (network, id)
);
CREATE TABLE replay_windows (id TEXT PRIMARY KEY, floor BIGINT NOT NULL, used TEXT NOT NULL);
CREATE TABLE blocked (network TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, blocked_at BIGINT NOT NULL, PRIMARY KEY (network, id));
CREATE TABLE policies (network TEXT PRIMARY KEY, version BIGINT NOT NULL, text TEXT NOT NULL, set_at BIGINT NOT NULL);
CREATE TABLE operator_actions (seq BIGSERIAL PRIMARY KEY, network TEXT NOT NULL, action TEXT NOT NULL, id TEXT, at BIGINT NOT NULL, detail TEXT);
CREATE TABLE admin_tokens (hash TEXT PRIMARY KEY, created_at BIGINT NOT NULL);
CREATE TABLE key_chains (id TEXT PRIMARY KEY, chain TEXT NOT NULL, key TEXT NOT NULL);
CREATE TABLE audit_logs (agent TEXT PRIMARY KEY, size BIGINT NOT NULL, frontier TEXT NOT NULL, cosigned TEXT, updated_at BIGINT NOT NULL);
CREATE TABLE audit_entries (agent TEXT NOT NULL, seq BIGINT NOT NULL, line TEXT NOT NULL, leaf_hash TEXT NOT NULL, PRIMARY KEY (agent, seq));
CREATE TABLE audit_checkpoints (agent TEXT NOT NULL, size BIGINT NOT NULL, note TEXT NOT NULL, stored_at BIGINT NOT NULL, PRIMARY KEY (agent, size));
CREATE TABLE audit_refusals (
  id BIGSERIAL PRIMARY KEY, agent TEXT NOT NULL, network TEXT NOT NULL, at BIGINT NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL,
  held BIGINT NOT NULL, size BIGINT, checkpoint TEXT
);

CREATE FUNCTION agentvpn_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$;
${APPEND_ONLY.map((t) => `
CREATE TRIGGER ${t}_append_only BEFORE UPDATE OR DELETE ON ${t} FOR EACH ROW EXECUTE FUNCTION agentvpn_append_only();
CREATE TRIGGER ${t}_append_only_truncate BEFORE TRUNCATE ON ${t} FOR EACH STATEMENT EXECUTE FUNCTION agentvpn_append_only();`).join('')}

CREATE FUNCTION agentvpn_notify_member() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('${CHANGE_CHANNEL}', json_build_object('t', 'member', 'n', NEW.network, 'i', NEW.id)::text);
  RETURN NULL;
END $$;
CREATE TRIGGER members_notify AFTER INSERT OR UPDATE ON members FOR EACH ROW EXECUTE FUNCTION agentvpn_notify_member();

CREATE FUNCTION agentvpn_notify_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.seq <> OLD.seq THEN
    PERFORM pg_notify('${CHANGE_CHANNEL}', json_build_object('t', 'record', 'n', NEW.network, 'i', NEW.id)::text);
  ELSIF NEW.online <> OLD.online OR NEW.last_seen <> OLD.last_seen THEN
    PERFORM pg_notify('${CHANGE_CHANNEL}', json_build_object('t', 'live', 'n', NEW.network, 'i', NEW.id, 'o', NEW.online, 's', NEW.last_seen)::text);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER records_notify AFTER INSERT OR UPDATE ON records FOR EACH ROW EXECUTE FUNCTION agentvpn_notify_record();

CREATE FUNCTION agentvpn_notify_action() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('${CHANGE_CHANNEL}', json_build_object('t', 'action', 'q', NEW.seq)::text);
  RETURN NULL;
END $$;
CREATE TRIGGER operator_actions_notify AFTER INSERT ON operator_actions FOR EACH ROW EXECUTE FUNCTION agentvpn_notify_action();

-- The registry's own audit log starts with this schema: actions taken before it are not logged afterwards.
INSERT INTO meta (key, value) VALUES ('${LOGGED_ACTIONS_KEY}', '0');
`;

/**
 * Version 2: the per-request steps as functions, so a signed read or a heartbeat is one round trip
 * (it was five and seven: BEGIN, lock, reads, writes, COMMIT, each waiting for the last). Called
 * alone, a function runs as its own transaction and holds the agent's advisory lock to its end.
 *
 * agentvpn_take is replay-window.ts's takeTimestamp over the stored window (floor, used as a JSON
 * array), with the same constants passed in; test/registry/pg-store.test.ts checks the two agree.
 * agentvpn_admit is a whole join, agentvpn_put_record a publish. agentvpn_heartbeat writes the row only when the agent's online state changes: the registry
 * writes last_seen of agents that stay online with its once-a-second liveness flush.
 */
const V2 = `
CREATE FUNCTION agentvpn_take(p_id TEXT, p_ts BIGINT, p_now BIGINT, p_skew BIGINT, p_slots INT) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
  w_floor BIGINT := -1;
  w_used BIGINT[] := '{}';
  w_text TEXT;
BEGIN
  PERFORM pg_advisory_xact_lock(${LOCK.agent}, hashtext(p_id));
  SELECT floor, used INTO w_floor, w_text FROM replay_windows WHERE id = p_id;
  IF FOUND THEN
    SELECT coalesce(array_agg(v::bigint ORDER BY v::bigint), '{}') INTO w_used FROM json_array_elements_text(w_text::json) AS v;
  ELSE
    w_floor := -1;
  END IF;
  IF p_ts <= w_floor OR p_ts = ANY(w_used) THEN RETURN FALSE; END IF;
  w_used := ARRAY(SELECT u FROM unnest(w_used || p_ts) AS u ORDER BY u);
  WHILE cardinality(w_used) > p_slots OR (cardinality(w_used) > 0 AND w_used[1] < p_now - p_skew) LOOP
    w_floor := GREATEST(w_floor, w_used[1]);
    w_used := w_used[2:];
  END LOOP;
  INSERT INTO replay_windows (id, floor, used) VALUES (p_id, w_floor, to_json(w_used)::text)
    ON CONFLICT (id) DO UPDATE SET floor = excluded.floor, used = excluded.used;
  RETURN TRUE;
END $$;

-- A publish without a new key chain (PgStore.putRecord keeps chains in a transaction of its own).
CREATE FUNCTION agentvpn_put_record(p_network TEXT, p_id TEXT, p_name TEXT, p_ipv4 TEXT, p_seq BIGINT, p_json TEXT, p_signature TEXT, p_now BIGINT)
RETURNS JSON LANGUAGE plpgsql AS $$
DECLARE
  m members%ROWTYPE;
  stored BIGINT;
BEGIN
  PERFORM pg_advisory_xact_lock(${LOCK.agent}, hashtext(p_id));
  SELECT * INTO m FROM members WHERE network = p_network AND id = p_id;
  IF NOT FOUND THEN RETURN json_build_object('code', 'NOT_JOINED'); END IF;
  IF m.ipv4 <> p_ipv4 THEN RETURN json_build_object('code', 'ADDRESS_MISMATCH', 'ipv4', m.ipv4); END IF;
  IF m.name <> p_name THEN
    IF EXISTS (SELECT 1 FROM members WHERE network = p_network AND name = p_name) THEN RETURN json_build_object('code', 'NAME_TAKEN'); END IF;
    UPDATE members SET name = p_name WHERE network = p_network AND id = p_id;
  END IF;
  SELECT seq INTO stored FROM records WHERE network = p_network AND id = p_id;
  IF stored IS NOT NULL AND p_seq <= stored THEN RETURN json_build_object('code', 'STALE_RECORD', 'seq', stored); END IF;
  INSERT INTO records (id, network, json, signature, seq, last_seen, online) VALUES (p_id, p_network, p_json, p_signature, p_seq, p_now, true)
    ON CONFLICT (network, id) DO UPDATE SET json = excluded.json, signature = excluded.signature, seq = excluded.seq, last_seen = excluded.last_seen, online = true;
  RETURN json_build_object('code', 'ok', 'ipv4', m.ipv4, 'joined_at', m.joined_at, 'tags', m.tags);
END $$;

CREATE FUNCTION agentvpn_heartbeat(p_network TEXT, p_id TEXT, p_online BOOLEAN, p_last_seen BIGINT, p_ts BIGINT, p_now BIGINT, p_skew BIGINT, p_slots INT)
RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
  was BOOLEAN;
BEGIN
  PERFORM pg_advisory_xact_lock(${LOCK.agent}, hashtext(p_id));
  SELECT online INTO was FROM records WHERE network = p_network AND id = p_id;
  IF NOT FOUND THEN RETURN 'not-found'; END IF;
  IF NOT agentvpn_take(p_id, p_ts, p_now, p_skew, p_slots) THEN RETURN 'replayed'; END IF;
  IF was IS DISTINCT FROM p_online THEN
    UPDATE records SET last_seen = GREATEST(last_seen, p_last_seen), online = p_online WHERE network = p_network AND id = p_id;
    RETURN 'saved';
  END IF;
  RETURN 'taken';
END $$;

-- A join in one round trip (it was a dozen in a transaction). The IPv4 rule is store.ts
-- allocateFromPool's (p_base, p_size from poolRange): from .1, skipping the pool's first and last
-- address and every x.x.x.0 and x.x.x.255. Nothing is written for a refusal, except a token use
-- given back and a known member's timestamp (taken first, as every store does).
CREATE FUNCTION agentvpn_admit(p_network TEXT, p_id TEXT, p_name TEXT, p_token TEXT, p_ts BIGINT, p_now BIGINT,
  p_pool TEXT, p_base BIGINT, p_size BIGINT, p_skew BIGINT, p_slots INT) RETURNS JSON LANGUAGE plpgsql AS $$
DECLARE
  known members%ROWTYPE;
  holder TEXT;
  left_uses BIGINT;
  token_tags TEXT;
  idx BIGINT;
  n BIGINT;
  addr TEXT;
BEGIN
  PERFORM pg_advisory_xact_lock(${LOCK.agent}, hashtext(p_id));
  IF EXISTS (SELECT 1 FROM blocked WHERE network = p_network AND id = p_id) THEN RETURN json_build_object('code', 'BLOCKED'); END IF;
  SELECT * INTO known FROM members WHERE network = p_network AND id = p_id;
  IF FOUND THEN
    IF NOT agentvpn_take(p_id, p_ts, p_now, p_skew, p_slots) THEN RETURN json_build_object('code', 'REPLAYED'); END IF;
  END IF;
  SELECT id INTO holder FROM members WHERE network = p_network AND name = p_name;
  IF holder IS NOT NULL AND holder <> p_id THEN RETURN json_build_object('code', 'NAME_TAKEN'); END IF;
  IF known.id IS NOT NULL THEN
    IF known.name <> p_name THEN UPDATE members SET name = p_name WHERE network = p_network AND id = p_id; END IF;
    RETURN json_build_object('code', 'ok', 'created', false, 'ipv4', known.ipv4, 'joined_at', known.joined_at, 'tags', known.tags);
  END IF;
  IF p_token IS NULL THEN RETURN json_build_object('code', 'BAD_TOKEN'); END IF;
  UPDATE tokens SET uses_left = uses_left - 1
    WHERE hash = p_token AND network = p_network AND (expires_at IS NULL OR expires_at > p_now) AND (uses_left IS NULL OR uses_left > 0)
    RETURNING uses_left, tags INTO left_uses, token_tags;
  IF NOT FOUND THEN RETURN json_build_object('code', 'BAD_TOKEN'); END IF;
  INSERT INTO pools (network, pool, next_index) VALUES (p_network, p_pool, 1) ON CONFLICT DO NOTHING;
  SELECT next_index INTO idx FROM pools WHERE network = p_network AND pool = p_pool FOR UPDATE;
  idx := GREATEST(idx, 1);
  LOOP
    IF idx >= p_size - 1 THEN addr := NULL; EXIT; END IF;
    n := p_base + idx;
    idx := idx + 1;
    CONTINUE WHEN n % 256 = 0 OR n % 256 = 255;
    addr := format('%s.%s.%s.%s', n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255);
    -- An address taken under another pool string of this network (the pool was changed) is skipped.
    EXIT WHEN NOT EXISTS (SELECT 1 FROM members WHERE network = p_network AND ipv4 = addr);
  END LOOP;
  IF addr IS NULL OR NOT agentvpn_take(p_id, p_ts, p_now, p_skew, p_slots) THEN
    UPDATE tokens SET uses_left = uses_left + 1 WHERE hash = p_token AND uses_left IS NOT NULL;
    RETURN json_build_object('code', CASE WHEN addr IS NULL THEN 'POOL_EXHAUSTED' ELSE 'REPLAYED' END);
  END IF;
  UPDATE pools SET next_index = idx WHERE network = p_network AND pool = p_pool;
  INSERT INTO members (id, network, name, ipv4, joined_at, tags) VALUES (p_id, p_network, p_name, addr, p_now, token_tags);
  RETURN json_build_object('code', 'ok', 'created', true, 'ipv4', addr, 'joined_at', p_now, 'tags', token_tags, 'used_up', left_uses = 0);
END $$;
`;

/** A change's JSON past this many bytes goes in its short form (pg_notify refuses 8,000; the instance ID and MAC take up to 130). */
export const MAX_CHANGE_BODY_BYTES = 7_800;

/**
 * Version 3: notifications carry what a receiver needs (the member row; the record with its
 * signature, liveness and key chain length), so no instance re-reads a change, and name the
 * instance that wrote it (its pool's connections set agentvpn.instance), so it skips its own.
 * They are authenticated with HMAC-SHA256 under a key only roles that may read feed_key hold:
 * any role that may connect to the database may NOTIFY, and a carried row is applied as it is.
 * pg-change-feed.ts has the payload table. feed_key keeps k for the instances and its RFC 2104
 * inner and outer pads (64-byte block) for the triggers; the key comes from gen_random_uuid()
 * (pg_strong_random, 2 x 122 random bits). A writer that may not read it sends no MAC.
 * `q` in member and record changes: the newest operator action seq the writer's statement saw,
 * so a receiver knows whether a removal it applied since is newer than the row (it re-reads then).
 */
const V3 = `
CREATE TABLE feed_key (only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row), k BYTEA NOT NULL, ki BYTEA NOT NULL, ko BYTEA NOT NULL);
REVOKE ALL ON feed_key FROM PUBLIC;
DO $$
DECLARE
  k BYTEA := sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'));
  padded BYTEA := k || decode(repeat('00', 32), 'hex');
  ki BYTEA := padded;
  ko BYTEA := padded;
BEGIN
  FOR j IN 0..63 LOOP
    ki := set_byte(ki, j, get_byte(padded, j) # 54);
    ko := set_byte(ko, j, get_byte(padded, j) # 92);
  END LOOP;
  INSERT INTO feed_key (k, ki, ko) VALUES (k, ki, ko);
END $$;

-- instance '.' mac '.' body; the short form when the body is too long for a notification.
CREATE FUNCTION agentvpn_change_payload(p_body TEXT, p_short TEXT) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
  body TEXT := CASE WHEN octet_length(p_body) > ${MAX_CHANGE_BODY_BYTES} THEN p_short ELSE p_body END;
  key feed_key%ROWTYPE;
  mac TEXT := '';
BEGIN
  IF has_table_privilege('feed_key', 'SELECT') THEN
    SELECT * INTO key FROM feed_key;
    mac := encode(sha256(key.ko || sha256(key.ki || convert_to(body, 'UTF8'))), 'hex');
  END IF;
  RETURN left(coalesce(current_setting('agentvpn.instance', true), ''), 64) || '.' || mac || '.' || body;
END $$;

CREATE FUNCTION agentvpn_last_action() RETURNS BIGINT LANGUAGE sql STABLE AS $$ SELECT coalesce(max(seq), 0) FROM operator_actions $$;

CREATE OR REPLACE FUNCTION agentvpn_notify_member() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('${CHANGE_CHANNEL}', agentvpn_change_payload(
    json_build_object('t', 'member', 'n', NEW.network, 'i', NEW.id, 'q', agentvpn_last_action(), 'name', NEW.name, 'ipv4', NEW.ipv4,
      'joined', NEW.joined_at, 'tags', NEW.tags)::text,
    json_build_object('t', 'member', 'n', NEW.network, 'i', NEW.id)::text));
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION agentvpn_notify_record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  body TEXT;
BEGIN
  IF TG_OP = 'INSERT' OR NEW.seq <> OLD.seq THEN
    PERFORM pg_notify('${CHANGE_CHANNEL}', agentvpn_change_payload(
      json_build_object('t', 'record', 'n', NEW.network, 'i', NEW.id, 'q', agentvpn_last_action(), 'seq', NEW.seq, 'rec', NEW.json::json,
        'sig', NEW.signature, 'o', NEW.online, 's', NEW.last_seen,
        'k', coalesce((SELECT json_array_length(chain::json) FROM key_chains WHERE id = NEW.id), 0))::text,
      json_build_object('t', 'record', 'n', NEW.network, 'i', NEW.id)::text));
  ELSIF NEW.online <> OLD.online OR NEW.last_seen <> OLD.last_seen THEN
    body := json_build_object('t', 'live', 'n', NEW.network, 'i', NEW.id, 'o', NEW.online, 's', NEW.last_seen)::text;
    PERFORM pg_notify('${CHANGE_CHANNEL}', agentvpn_change_payload(body, body));
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION agentvpn_notify_action() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  body TEXT := json_build_object('t', 'action', 'q', NEW.seq)::text;
BEGIN
  PERFORM pg_notify('${CHANGE_CHANNEL}', agentvpn_change_payload(body, body));
  RETURN NULL;
END $$;
`;

/** Every migration, oldest first; append only (a released migration never changes). */
export const MIGRATIONS: readonly Migration[] = [{ version: 1, sql: V1 }, { version: 2, sql: V2 }, { version: 3, sql: V3 }];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

/** The version the database is at (0: empty), inside the caller's transaction. */
async function currentVersion(c: PoolClient): Promise<number> {
  await c.query('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
  const row = (await c.query<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_version')).rows[0];
  return row.v ?? 0;
}

/** Brings the database to SCHEMA_VERSION, one transaction per migration; refuses a newer database. */
export async function migrate(connect: () => Promise<PoolClient>, migrations: readonly Migration[] = MIGRATIONS): Promise<{ from: number; to: number }> {
  const latest = migrations[migrations.length - 1].version;
  let from: number | null = null;
  for (;;) {
    const c = await connect();
    try {
      await c.query('BEGIN');
      await c.query('SELECT pg_advisory_xact_lock($1, 0)', [LOCK.migrate]);
      const version = await currentVersion(c);
      from ??= version;
      if (version > latest) {
        throw new AgentVpnError('REGISTRY_DB_TOO_NEW', `the registry database has schema version ${version}, newer than this agentvpn understands (${latest})`,
          'run the newer agentvpn version that migrated it (every registry instance on one database must run it), or restore a backup');
      }
      const next = migrations.find((m) => m.version > version);
      if (!next) {
        await c.query('COMMIT');
        return { from, to: version };
      }
      await c.query(next.sql);
      await c.query('INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)', [next.version, Date.now()]);
      await c.query('COMMIT');
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      c.release();
    }
  }
}
