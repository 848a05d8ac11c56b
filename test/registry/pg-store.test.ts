// The store contract, run against both stores: SqliteStore (the default) and PgStore on a real
// PostgreSQL started by the test (initdb in a temp dir, an unprivileged user, a unix socket).
// Then what only a shared database has: two PgStore instances racing admissions on one network
// (never one IPv4 or one name twice), versioned migrations (a newer schema is refused), the
// append-only audit tables, and URL redaction.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { extendRange } from '../../src/audit/compact-range.js';
import { leafHash } from '../../src/audit/merkle.js';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { parsePrefix, type Prefix } from '../../src/ip/prefix.js';
import { postgresUnavailableReason, startPostgres, type LabPostgres } from '../../src/lab/postgres.js';
import pgLib from 'pg';
import { MIGRATIONS, migrate } from '../../src/registry/pg-migrations.js';
import { PgStore, redactDbUrl } from '../../src/registry/pg-store.js';
import type { AgentRecord, SignedRecord } from '../../src/registry/record.js';
import { SqliteStore } from '../../src/registry/sqlite-store.js';
import type { AdmitRequest, AuditAppend, RegistryStore } from '../../src/registry/store.js';
import { MAX_CLOCK_SKEW_MS } from '../../src/registry/protocol.js';
import { EMPTY_WINDOW, WINDOW_SLOTS, isReplayed, takeTimestamp, type ReplayWindow } from '../../src/registry/replay-window.js';

const canRun = process.getuid?.() === 0 && postgresUnavailableReason() === null;
if (process.env.CI && !canRun) throw new Error(`pg-store tests need root and PostgreSQL: ${postgresUnavailableReason() ?? 'not root'}`);

const POOL = parsePrefix('100.64.0.0/24') as Prefix;
const NET = 'prod';
const newId = () => agentIdOf(randomBytes(32));

let pg: LabPostgres | undefined;
let dbCounter = 0;

/** A fresh empty PostgreSQL database per test (isolation without restarting the server). */
async function freshPgUrl(): Promise<string> {
  const name = `t${dbCounter++}`;
  await pg!.sql(`CREATE DATABASE ${name}`, 'postgres');
  return pg!.urlOf(name);
}

function admitReq(id: string, name: string, tokenHash: string | null, timestamp: number, pool: Prefix = POOL): AdmitRequest {
  return { network: NET, id, name, tokenHash, timestamp, pool, now: 1_000 };
}

function record(id: string, name: string, ipv4: string, seq: number): SignedRecord {
  const r: AgentRecord = {
    v: 1, network: NET, id, name, wgPublicKey: 'k', ipv4, ipv6: 'fd00::1', endpoints: [], capabilities: [], seq, issuedAt: 1, expiresAt: 10_000_000,
  };
  return { record: r, signature: 'sig' };
}

function ship(agent: string, from: number, n: number, frontier: Buffer[]): AuditAppend {
  const entries = Array.from({ length: n }, (_, i) => ({ seq: from + i, line: `line ${from + i}`, leafHash: leafHash(Buffer.from(`line ${from + i}`)) }));
  return { agent, from, entries, frontier: extendRange(frontier, from, entries.map((e) => e.leafHash)), cosigned: `note ${from + n}`, now: 1 };
}

const tokenOf = (hash: string, usesLeft: number | null, tags: string[] = []) => ({ hash, network: NET, createdAt: 1, expiresAt: null, usesLeft, tags });

describe.runIf(canRun)('registry stores', () => {
  beforeAll(async () => {
    pg = await startPostgres();
  }, 60_000);
  afterAll(async () => {
    await pg?.stop();
  });

  const kinds: Array<[string, () => Promise<{ store: RegistryStore; done: () => Promise<void> }>]> = [
    ['sqlite', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'agentvpn-store-'));
      const store = new SqliteStore(join(dir, 'registry.db'));
      return { store, done: async () => { await store.close(); rmSync(dir, { recursive: true, force: true }); } };
    }],
    ['postgres', async () => {
      const store = await PgStore.open(await freshPgUrl());
      return { store, done: () => store.close() };
    }],
  ];

  describe.each(kinds)('contract: %s', (_kind, open) => {
    let store: RegistryStore;
    let done: () => Promise<void>;
    beforeEach(async () => {
      ({ store, done } = await open());
    });
    afterEach(async () => {
      await done();
    });

    it('tokens: listed newest first, checked without taking a use, used up by admissions, with their tags', async () => {
      await store.addToken(tokenOf('t1', 1, ['gpu']));
      await store.addToken({ ...tokenOf('t2', null), createdAt: 5 });
      await store.addToken({ ...tokenOf('old', null), expiresAt: 500 });
      expect((await store.tokens(NET, 10)).map((t) => t.hash)).toEqual(['t2', 't1', 'old']);
      expect(await store.checkToken(NET, 't1', 1_000)).toEqual({ ok: true, expiresAt: null });
      expect(await store.checkToken('other', 't1', 1_000)).toEqual({ ok: false });
      expect(await store.checkToken(NET, 'old', 1_000)).toEqual({ ok: false });
      const a = newId();
      const r = await store.admit(admitReq(a, 'a', 't1', 10));
      expect(r).toMatchObject({ ok: true, created: true, usedUpToken: 't1', member: { ipv4: '100.64.0.1', tags: ['gpu'] } });
      expect(await store.checkToken(NET, 't1', 1_000)).toEqual({ ok: false });
      expect(await store.admit(admitReq(newId(), 'b', 't1', 10))).toMatchObject({ ok: false, code: 'BAD_TOKEN' });
      expect(await store.admit(admitReq(newId(), 'b', null, 10))).toMatchObject({ ok: false, code: 'BAD_TOKEN' });
      expect((await store.actionsSince(0, 10)).map((x) => x.action)).toEqual(['token', 'token', 'token']);
    });

    it('admit: names unique per network, a known ID re-joins without a token and may rename, its timestamps are taken once', async () => {
      await store.addToken(tokenOf('t', null));
      const a = newId();
      const b = newId();
      expect(await store.admit(admitReq(a, 'alpha', 't', 10))).toMatchObject({ ok: true, created: true });
      expect(await store.admit(admitReq(b, 'alpha', 't', 10))).toMatchObject({ ok: false, code: 'NAME_TAKEN' });
      expect(await store.admit(admitReq(b, 'beta', 't', 10))).toMatchObject({ ok: true, member: { ipv4: '100.64.0.2' } });
      expect(await store.admit(admitReq(a, 'alpha', null, 10))).toMatchObject({ ok: false, code: 'REPLAYED' });
      expect(await store.admit(admitReq(a, 'gamma', null, 11))).toMatchObject({ ok: true, created: false, member: { name: 'gamma', ipv4: '100.64.0.1' } });
      expect((await store.members()).map((m) => `${m.name}=${m.ipv4}`).sort()).toEqual(['beta=100.64.0.2', 'gamma=100.64.0.1']);
      expect(await store.useTimestamp(a, 11, 1_000)).toMatchObject({ ok: false, code: 'REPLAYED' });
      expect(await store.useTimestamp(a, 12, 1_000)).toEqual({ ok: true });
    });

    it('admit: an exhausted pool refuses and gives the token use back; a blocked ID is refused', async () => {
      const tiny = parsePrefix('100.64.0.0/30') as Prefix; // .1 and .2 only
      await store.addToken(tokenOf('t', 3));
      expect(await store.admit(admitReq(newId(), 'a', 't', 1, tiny))).toMatchObject({ ok: true });
      expect(await store.admit(admitReq(newId(), 'b', 't', 1, tiny))).toMatchObject({ ok: true });
      expect(await store.admit(admitReq(newId(), 'c', 't', 1, tiny))).toMatchObject({ ok: false, code: 'POOL_EXHAUSTED' });
      expect((await store.tokens(NET, 1))[0].usesLeft).toBe(1);
      const x = newId();
      expect(await store.removeMember(NET, x, true, 5)).toMatchObject({ ok: true, wasMember: false });
      expect(await store.admit(admitReq(x, 'x', 't', 1))).toMatchObject({ ok: false, code: 'BLOCKED' });
      expect((await store.blocked()).map((b) => b.id)).toEqual([x]);
    });

    it('admit: addresses in order from .1, never an x.x.x.255 or x.x.x.0; a changed pool skips what the old one gave; tags and used-up tokens', async () => {
      const wide = parsePrefix('100.64.0.0/23') as Prefix;
      await store.addToken(tokenOf('t', 258, ['team-a']));
      const got: string[] = [];
      for (let i = 0; i < 256; i++) {
        const r = await store.admit(admitReq(newId(), `n${i}`, 't', 1, wide));
        if (!r.ok) throw new Error(r.message);
        got.push(r.member.ipv4);
        if (i === 0) expect(r.member.tags).toEqual(['team-a']);
      }
      expect(got.slice(252, 256)).toEqual(['100.64.0.253', '100.64.0.254', '100.64.1.1', '100.64.1.2']);
      // The same network with another pool string that covers the given addresses: they are skipped.
      const other = parsePrefix('100.64.0.0/22') as Prefix;
      const next = await store.admit(admitReq(newId(), 'o1', 't', 1, other));
      expect(next).toMatchObject({ ok: true, member: { ipv4: '100.64.1.3' }, usedUpToken: null });
      const last = await store.admit(admitReq(newId(), 'o2', 't', 1, other));
      expect(last).toMatchObject({ ok: true, usedUpToken: 't' });
    });

    it('putRecord: joined members only, the allocated IPv4, a free name, newer seqs, chains that extend', async () => {
      await store.addToken(tokenOf('t', null));
      const a = newId();
      const b = newId();
      await store.admit(admitReq(a, 'a', 't', 1));
      await store.admit(admitReq(b, 'b', 't', 1));
      expect(await store.putRecord(NET, record(newId(), 'z', '100.64.0.9', 1), 5)).toMatchObject({ ok: false, code: 'NOT_JOINED' });
      expect(await store.putRecord(NET, record(a, 'a', '100.64.0.2', 1), 5)).toMatchObject({ ok: false, code: 'ADDRESS_MISMATCH' });
      expect(await store.putRecord(NET, record(a, 'b', '100.64.0.1', 1), 5)).toMatchObject({ ok: false, code: 'NAME_TAKEN' });
      expect(await store.putRecord(NET, record(a, 'a2', '100.64.0.1', 2), 5)).toMatchObject({ ok: true, member: { name: 'a2' } });
      expect(await store.putRecord(NET, record(a, 'a2', '100.64.0.1', 2), 6)).toMatchObject({ ok: false, code: 'STALE_RECORD' });
      const chain = { id: a, chain: [{ n: 0 }, { n: 1 }], key: 'K1' };
      expect(await store.putRecord(NET, record(a, 'a2', '100.64.0.1', 3), 7, chain)).toMatchObject({ ok: true });
      const fork = { id: a, chain: [{ n: 0 }, { n: 9 }], key: 'K9' };
      expect(await store.putRecord(NET, record(a, 'a2', '100.64.0.1', 4), 8, fork)).toMatchObject({ ok: false, code: 'CHAIN_FORK' });
      expect(await store.keyChains()).toEqual([chain]);
      const [rec] = await store.records();
      expect(rec).toMatchObject({ network: NET, id: a, online: true, lastSeen: 7, signed: { record: { seq: 3, name: 'a2' } } });
    });

    it('liveness: heartbeats take their timestamp once; sweeps write many at once', async () => {
      await store.addToken(tokenOf('t', null));
      const a = newId();
      await store.admit(admitReq(a, 'a', 't', 1));
      expect(await store.setOnline({ network: NET, id: a, online: true, lastSeen: 9, timestamp: 2, now: 9 })).toMatchObject({ ok: false, code: 'NOT_FOUND' });
      await store.putRecord(NET, record(a, 'a', '100.64.0.1', 1), 5);
      expect(await store.setOnline({ network: NET, id: a, online: false, lastSeen: 9, timestamp: 2, now: 9 })).toEqual({ ok: true });
      expect(await store.setOnline({ network: NET, id: a, online: true, lastSeen: 10, timestamp: 2, now: 10 })).toMatchObject({ ok: false, code: 'REPLAYED' });
      expect((await store.records())[0]).toMatchObject({ online: false, lastSeen: 9 });
      await store.setLiveness([{ network: NET, id: a, lastSeen: 20, online: true }]);
      expect((await store.records())[0]).toMatchObject({ online: true, lastSeen: 20 });
    });

    it('liveness: a heartbeat that keeps an agent online is stored within a second (one statement on PostgreSQL, its last_seen written behind)', async () => {
      await store.addToken(tokenOf('t', null));
      const a = newId();
      await store.admit(admitReq(a, 'a', 't', 1));
      await store.putRecord(NET, record(a, 'a', '100.64.0.1', 1), 5);
      expect(await store.setOnline({ network: NET, id: a, online: true, lastSeen: 30, timestamp: 3, now: 30 })).toEqual({ ok: true });
      const started = Date.now();
      while ((await store.records())[0].lastSeen !== 30 && Date.now() - started < 5_000) await new Promise((r) => setTimeout(r, 50));
      console.log(`a heartbeat's last_seen stored after ${Date.now() - started} ms`);
      expect((await store.records())[0]).toMatchObject({ online: true, lastSeen: 30 });
      // An older heartbeat (requests overtake each other) never moves it back.
      expect(await store.setOnline({ network: NET, id: a, online: true, lastSeen: 25, timestamp: 4, now: 30 })).toEqual({ ok: true });
      await new Promise((r) => setTimeout(r, 1_200));
      expect((await store.records())[0]).toMatchObject({ online: true, lastSeen: 30 });
    });

    it('replay windows: the store takes and refuses exactly what replay-window.ts does, for any order of timestamps', async () => {
      // Where the two could differ most: more distinct timestamps than the window's slots (the
      // smallest fall out and raise the floor), then every value around the floor.
      const check = async (id: string, timestamps: number[], start: ReplayWindow, now: number) => {
        let model = start;
        for (const timestamp of timestamps) {
          const expected = !isReplayed(model, timestamp);
          if (expected) model = takeTimestamp(model, timestamp, now);
          expect((await store.useTimestamp(id, timestamp, now)).ok, `timestamp ${timestamp}`).toBe(expected);
        }
        return model;
      };
      const evens = Array.from({ length: WINDOW_SLOTS + 6 }, (_, i) => 1_000_000 + 2 * (i + 1));
      const after = await check(newId(), [...evens, ...Array.from({ length: 2 * WINDOW_SLOTS + 14 }, (_, i) => 1_000_000 + i)], EMPTY_WINDOW, 1_000_100);
      expect(after.floor).toBeGreaterThan(1_000_000);
      let runs = 0;
      await fc.assert(fc.asyncProperty(
        fc.array(fc.record({ ts: fc.integer({ min: 0, max: 400 }), advance: fc.oneof({ arbitrary: fc.constant(0), weight: 19 }, { arbitrary: fc.integer({ min: 1, max: MAX_CLOCK_SKEW_MS / 4 }), weight: 1 }) }),
          { minLength: 100, maxLength: 200 }),
        async (steps) => {
          const id = newId();
          let model: ReplayWindow = EMPTY_WINDOW;
          let now = 1_000_000;
          for (const { ts, advance } of steps) {
            now += advance;
            const timestamp = now - MAX_CLOCK_SKEW_MS / 2 + ts; // near the clock, often repeated, sometimes too old for the window
            const expected = !isReplayed(model, timestamp);
            if (expected) model = takeTimestamp(model, timestamp, now);
            expect((await store.useTimestamp(id, timestamp, now)).ok).toBe(expected);
          }
          runs++;
        }), { numRuns: 25 });
      console.log(`${runs} random sequences: the store agreed with the model on every timestamp`);
    }, 60_000);

    it('removeMember by name, with an operator action; NOT_FOUND for a stranger; policies versioned; admin tokens; meta', async () => {
      await store.addToken(tokenOf('t', null));
      const a = newId();
      await store.admit(admitReq(a, 'a', 't', 1));
      await store.putRecord(NET, record(a, 'a', '100.64.0.1', 1), 5);
      expect(await store.removeMember(NET, 'a', false, 6)).toEqual({ ok: true, id: a, name: 'a', wasMember: true });
      expect(await store.removeMember(NET, 'nobody', false, 6)).toMatchObject({ ok: false, code: 'NOT_FOUND' });
      expect(await store.members()).toEqual([]);
      expect(await store.records()).toEqual([]);
      // Its IPv4 is never handed out again.
      expect(await store.admit(admitReq(newId(), 'b', 't', 1))).toMatchObject({ ok: true, member: { ipv4: '100.64.0.2' } });
      expect(await store.setPolicy(NET, 'p1', 7)).toEqual({ network: NET, version: 1, text: 'p1', setAt: 7 });
      expect((await store.setPolicy(NET, 'p2', 8)).version).toBe(2);
      expect(await store.policies()).toEqual([{ network: NET, version: 2, text: 'p2', setAt: 8 }]);
      await store.addAdminToken('adm', 9);
      expect(await store.adminTokenHashes()).toEqual(['adm']);
      const actions = await store.actionsSince(1, 10);
      expect(actions.map((x) => x.action)).toEqual(['remove', 'policy', 'policy', 'admin-token']);
      expect(actions[0].detail).toEqual({ name: 'a', wasMember: true });
      expect(await store.lastActionSeq()).toBe(actions[3].seq);
      expect(await store.getMeta('nothing')).toBeNull();
      await store.setMeta('k', 'v1');
      await store.setMeta('k', 'v2');
      expect(await store.getMeta('k')).toBe('v2');
    });

    it('audit: ships in order, AUDIT_GAP for a ship at a size already taken, refusals by cursor', async () => {
      const agent = newId();
      expect(await store.auditHead(agent)).toEqual({ agent, size: 0, frontier: [], cosigned: null });
      expect(await store.appendAudit(ship(agent, 0, 3, []))).toEqual({ ok: true });
      expect(await store.appendAudit(ship(agent, 0, 5, []))).toEqual({ ok: false, code: 'AUDIT_GAP', held: 3, cosigned: 'note 3' });
      const head = await store.auditHead(agent);
      expect(await store.appendAudit(ship(agent, 3, 2, head.frontier))).toEqual({ ok: true });
      expect((await store.auditEntries(agent, 1, 2)).map((e) => e.line)).toEqual(['line 1', 'line 2']);
      expect((await store.auditCheckpoints(agent, 0, 10)).map((c) => c.size)).toEqual([3, 5]);
      expect((await store.auditHeads()).map((h) => [h.agent, h.size])).toEqual([[agent, 5]]);
      const id1 = await store.addAuditRefusal({ agent, network: NET, at: 1, code: 'AUDIT_INCONSISTENT', reason: 'fork', held: 5, size: 5, checkpoint: 'x' });
      await store.addAuditRefusal({ agent, network: NET, at: 2, code: 'AUDIT_INCONSISTENT', reason: 'fork2', held: 5, size: null, checkpoint: null });
      expect((await store.auditRefusals(id1, 10)).map((r) => r.reason)).toEqual(['fork2']);
    });
  });

  describe('postgres only', () => {
    it('a sweep that marks an agent offline while its heartbeat waits to be written behind does not leave it offline', async () => {
      const url = await freshPgUrl();
      const [s1, s2] = await Promise.all([PgStore.open(url), PgStore.open(url)]);
      try {
        await s1.addToken(tokenOf('t', null));
        const a = newId();
        await s1.admit(admitReq(a, 'a', 't', 1));
        await s1.putRecord(NET, record(a, 'a', '100.64.0.1', 1), 5);
        // Instance 1 hears a heartbeat (online already: written behind); instance 2, whose view of
        // last_seen is older, marks the agent offline before the write-behind's flush.
        expect(await s1.setOnline({ network: NET, id: a, online: true, lastSeen: 30, timestamp: 2, now: 30 })).toEqual({ ok: true });
        await s2.setLiveness([{ network: NET, id: a, lastSeen: 5, online: false }]);
        expect((await s2.records())[0]).toMatchObject({ online: false, lastSeen: 5 });
        const started = Date.now();
        while ((await s2.records())[0].lastSeen !== 30 && Date.now() - started < 5_000) await new Promise((r) => setTimeout(r, 50));
        expect((await s2.records())[0]).toMatchObject({ online: true, lastSeen: 30 });
      } finally {
        await s1.close();
        await s2.close();
      }
    });

    it('two instances racing 200 admissions on one network never hand out one IPv4 or one name twice', async () => {
      const url = await freshPgUrl();
      const [s1, s2] = await Promise.all([PgStore.open(url), PgStore.open(url)]);
      try {
        // Four tokens (one token's row lock alone would serialize its admissions) of 30 uses, 50 admissions each: uses are raced too.
        for (let t = 0; t < 4; t++) await s1.addToken(tokenOf(`t${t}`, 30));
        const started = Date.now();
        const results = await Promise.all(Array.from({ length: 200 }, (_, i) => {
          // The first 100 on one instance, the rest on the other; admissions i and i + 100 (i < 50) want one name.
          const store = i < 100 ? s1 : s2;
          const name = i % 100 < 50 ? `dup-${i % 100}` : `agent-${i}`;
          return store.admit(admitReq(newId(), name, `t${i % 4}`, i));
        }));
        const ms = Date.now() - started;
        const ok = results.filter((r) => r.ok);
        const ipv4s = new Set(ok.map((r) => r.ok && r.member.ipv4));
        const names = new Set(ok.map((r) => r.ok && r.member.name));
        const members = await s2.members();
        const codes: Record<string, number> = {};
        for (const r of results) if (!r.ok) codes[r.code] = (codes[r.code] ?? 0) + 1;
        console.log(`200 admissions over 2 instances in ${ms} ms: ${ok.length} admitted, distinct IPv4 ${ipv4s.size}, distinct names ${names.size}, refused ${JSON.stringify(codes)}, token uses left ${(await s1.tokens(NET, 4)).map((t) => t.usesLeft).join(',')}`);
        expect(ok.length).toBe(120);
        expect(ipv4s.size).toBe(ok.length);
        expect(names.size).toBe(ok.length);
        expect(members.length).toBe(ok.length);
        expect(new Set(members.map((m) => m.ipv4)).size).toBe(members.length);
        expect((await s1.tokens(NET, 4)).map((t) => t.usesLeft)).toEqual([0, 0, 0, 0]);
        expect(codes.NAME_TAKEN ?? 0).toBeGreaterThan(0);
        expect(Object.keys(codes).every((c) => c === 'NAME_TAKEN' || c === 'BAD_TOKEN')).toBe(true);
      } finally {
        await s1.close();
        await s2.close();
      }
    });

    it('operator actions commit in seq order across instances, so a cursor skips none', async () => {
      const url = await freshPgUrl();
      const [s1, s2] = await Promise.all([PgStore.open(url), PgStore.open(url)]);
      try {
        const seen: number[] = [];
        let cursor = 0;
        const reader = (async () => {
          const deadline = Date.now() + 15_000;
          while (Date.now() < deadline && seen.length < 300) {
            for (const a of await s1.actionsSince(cursor, 1000)) {
              seen.push(a.seq);
              cursor = a.seq;
            }
          }
        })();
        await Promise.all(Array.from({ length: 300 }, (_, i) => (i % 2 ? s1 : s2).addToken({ ...tokenOf(`h${i}`, null), network: `net-${i % 7}` })));
        await reader;
        console.log(`operator actions read by cursor while 2 instances wrote 300: ${seen.length} seen`);
        expect(seen.length).toBe(300);
      } finally {
        await s1.close();
        await s2.close();
      }
    });

    it('migrations: versioned; a second instance finds the schema done; a newer schema is refused with a hint', async () => {
      const url = await freshPgUrl();
      const name = url.slice(url.lastIndexOf('/') + 1, url.indexOf('?'));
      await Promise.all([PgStore.open(url), PgStore.open(url)]).then((s) => Promise.all(s.map((x) => x.close())));
      expect((await pg!.sql('SELECT version FROM schema_version ORDER BY version', name)).trim()).toBe(MIGRATIONS.map((m) => m.version).join('\n'));
      await pg!.sql(`INSERT INTO schema_version (version, applied_at) VALUES (99, 0)`, name);
      await expect(PgStore.open(url)).rejects.toMatchObject({ code: 'REGISTRY_DB_TOO_NEW', hint: expect.stringMatching(/newer agentvpn/) });
    });

    it('migration 2 on a database at version 1: the replay windows held before still refuse what they took', async () => {
      const url = await freshPgUrl();
      const pool = new pgLib.Pool({ connectionString: url, max: 1 });
      try {
        await migrate(() => pool.connect(), MIGRATIONS.slice(0, 1));
        const id = newId();
        // A window as version 1 wrote it (JSON text): 40 and 50 taken, the floor at 10.
        await pool.query('INSERT INTO replay_windows (id, floor, used) VALUES ($1, 10, $2)', [id, '[40,50]']);
        const store = await PgStore.open(url);
        try {
          expect((await store.useTimestamp(id, 50, 60)).ok).toBe(false);
          expect((await store.useTimestamp(id, 10, 60)).ok).toBe(false);
          expect((await store.useTimestamp(id, 45, 60)).ok).toBe(true);
          expect((await pool.query('SELECT floor, used FROM replay_windows WHERE id = $1', [id])).rows[0]).toEqual({ floor: '10', used: '[40,45,50]' });
        } finally {
          await store.close();
        }
      } finally {
        await pool.end();
      }
    });

    it('audit tables refuse UPDATE, DELETE and TRUNCATE, whoever connects', async () => {
      const url = await freshPgUrl();
      const name = url.slice(url.lastIndexOf('/') + 1, url.indexOf('?'));
      const store = await PgStore.open(url);
      try {
        const agent = newId();
        await store.appendAudit(ship(agent, 0, 2, []));
        await store.addAuditRefusal({ agent, network: NET, at: 1, code: 'AUDIT_INCONSISTENT', reason: 'fork', held: 2, size: 2, checkpoint: 'x' });
        for (const sql of ["UPDATE audit_entries SET line = 'edited'", 'DELETE FROM audit_checkpoints', 'DELETE FROM audit_refusals', 'TRUNCATE audit_entries']) {
          await expect(pg!.sql(sql, name), sql).rejects.toThrow(/append-only/);
        }
        expect((await store.auditEntries(agent, 0, 10)).map((e) => e.line)).toEqual(['line 0', 'line 1']);
      } finally {
        await store.close();
      }
    });

    it('an unreachable database is refused with the URL redacted', async () => {
      const url = 'postgres://agentvpn:s3cret-pw@localhost/none?host=/nonexistent-dir';
      expect(redactDbUrl(url)).toBe('postgres://agentvpn:***@localhost/none?host=/nonexistent-dir');
      expect(redactDbUrl('postgresql://u@h/db?password=s3cret-pw&x=1')).toBe('postgresql://u@h/db?password=***&x=1');
      const err = await PgStore.open(url).then(() => null, (e: Error & { code?: string; hint?: string }) => e);
      expect(err).toMatchObject({ code: 'REGISTRY_DB' });
      expect(`${err!.message} ${err!.hint}`).not.toContain('s3cret-pw');
    });
  });
});
