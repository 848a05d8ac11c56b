// The change feed's payloads (pg-change-feed.ts, migration 3) on a real PostgreSQL, with two
// stores and their feeds in this process (no HTTP server): what each feed reads from the database
// per change it follows, counted by wrapping the store's read methods (so the count means the
// same on the code before migration 3, which re-read every notification). Measured: reads by the
// writer's own feed (0: it skips its own), reads by the other feed (0: the row is carried), the
// re-read of a row too long for a notification, and what forged, unauthenticated, malformed and
// replayed notifications from a role that merely connects do (counted, never applied).
import { createHmac, randomBytes } from 'node:crypto';
import pgLib from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { parsePrefix, type Prefix } from '../../src/ip/prefix.js';
import { postgresUnavailableReason, startPostgres, type LabPostgres } from '../../src/lab/postgres.js';
import { waitFor } from '../../src/lab/proc.js';
import { Fleet } from '../../src/registry/fleet-state.js';
import { PgChangeFeed } from '../../src/registry/pg-change-feed.js';
import { CHANGE_CHANNEL } from '../../src/registry/pg-migrations.js';
import { PgStore } from '../../src/registry/pg-store.js';
import type { AgentRecord, SignedRecord } from '../../src/registry/record.js';

const canRun = process.getuid?.() === 0 && postgresUnavailableReason() === null;
if (process.env.CI && !canRun) throw new Error(`pg-feed-payloads tests need root and PostgreSQL: ${postgresUnavailableReason() ?? 'not root'}`);

const NET = 'prod';
const POOL = parsePrefix('100.64.0.0/16') as Prefix;
const TOKEN = 'token-hash';
const AGENTS = 20;

/** A store, its feed, the fleet the feed keeps, the events it emitted and the reads it made. */
interface Follower {
  store: PgStore;
  feed: PgChangeFeed;
  fleet: Fleet;
  events: Array<{ kind: string; id: string }>;
  reads: { n: number };
  sync: { appliedSeq: number; poll(): Promise<void> };
}

async function follower(url: string): Promise<Follower> {
  const store = await PgStore.open(url);
  const reads = { n: 0 };
  // Every read the feed may make for one change, counted.
  for (const m of ['member', 'agent'] as const) {
    const original = store[m].bind(store) as (...a: unknown[]) => Promise<unknown>;
    (store as unknown as Record<string, unknown>)[m] = (...a: unknown[]) => {
      reads.n++;
      return original(...a);
    };
  }
  const fleet = new Fleet();
  const events: Follower['events'] = [];
  const sync = { appliedSeq: 0, poll: async () => undefined };
  const feed = new PgChangeFeed({ store, fleet, sync, log: pino({ level: 'silent' }), emit: (_n, kind, _e, id) => void events.push({ kind, id }) });
  await feed.start();
  return { store, feed, fleet, events, reads, sync };
}

function record(id: string, name: string, ipv4: string, seq: number, extra: Record<string, unknown> = {}): SignedRecord {
  const r: AgentRecord = {
    v: 1, network: NET, id, name, wgPublicKey: 'k', ipv4, ipv6: 'fd00::1', endpoints: ['192.0.2.7:51820'], capabilities: ['svc.test'], seq,
    issuedAt: 1, expiresAt: 10_000_000_000_000, ...extra,
  };
  return { record: r, signature: 'c2ln' };
}

/** Joins and publishes through `store` (as a registry instance writing its own change would). */
async function register(store: PgStore, name: string): Promise<{ id: string; ipv4: string }> {
  const id = agentIdOf(randomBytes(32));
  const now = Date.now();
  const admitted = await store.admit({ network: NET, id, name, tokenHash: TOKEN, timestamp: now, pool: POOL, now });
  if (!admitted.ok) throw new Error(admitted.message);
  const put = await store.putRecord(NET, record(id, name, admitted.member.ipv4, 1), now);
  if (!put.ok) throw new Error(put.message);
  return { id, ipv4: admitted.member.ipv4 };
}

const settle = () => new Promise((r) => setTimeout(r, 300));

describe.runIf(canRun)('the change feed carries rows and skips its own (two stores on one PostgreSQL)', () => {
  let pg: LabPostgres;
  let url: string;
  let one: Follower;
  let two: Follower;
  /** A connection of no registry instance: psql, a script, an attacker's role. */
  let outsider: pgLib.Client;
  /** Genuine payloads as any listener sees them (an attacker may record and replay them). */
  const heard: string[] = [];
  let agents: Array<{ id: string; ipv4: string }> = [];

  const notify = (payload: string) => outsider.query('SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, payload]);

  beforeAll(async () => {
    pg = await startPostgres();
    url = pg.url;
    one = await follower(url);
    two = await follower(url);
    outsider = new pgLib.Client({ connectionString: url });
    await outsider.connect();
    outsider.on('notification', (m) => void (m.payload && heard.push(m.payload)));
    await outsider.query(`LISTEN ${CHANGE_CHANNEL}`);
    await one.store.addToken({ hash: TOKEN, network: NET, createdAt: 1, expiresAt: null, usesLeft: null, tags: ['gpu'] });
    await waitFor(() => one.feed.stats().resyncs > 0 && two.feed.stats().resyncs > 0, { what: 'the start re-reads', intervalMs: 5 });
    for (let i = 0; i < AGENTS; i++) agents.push(await register(one.store, `agent-${i}`));
    await waitFor(() => two.events.filter((e) => e.kind === 'upsert').length >= AGENTS, { what: `${AGENTS} upserts on the other feed`, intervalMs: 5 });
    await settle();
  }, 60_000);

  afterAll(async () => {
    await outsider?.end().catch(() => undefined);
    for (const f of [one, two]) {
      await f?.feed.stop();
      await f?.store.close();
    }
    await pg?.stop();
  });

  it("the writer's own feed reads nothing for its own changes", () => {
    const s = one.feed.stats();
    console.log(`own feed after ${AGENTS} joins + publishes: ${one.reads.n} reads, ${s.own} notifications skipped as its own, ${one.events.length} events`);
    expect(one.reads.n).toBe(0);
    expect(s.own).toBe(2 * AGENTS + 1); // and the token's action (the admin routes poll after their own)
    expect(one.events).toHaveLength(0);
  });

  it("the other feed applies the carried rows without a read, tags and all", () => {
    const s = two.feed.stats();
    console.log(`other feed after ${AGENTS} joins + publishes: ${two.reads.n} reads, ${s.carried} changes applied from the payload, ${two.events.length} upserts`);
    expect(two.reads.n).toBe(0);
    expect(s.carried).toBe(2 * AGENTS);
    const state = two.fleet.net(NET);
    for (const a of agents) {
      expect(state.agents.get(a.id)?.view.record.ipv4).toBe(a.ipv4);
      expect(state.members.get(a.id)?.tags).toEqual(['gpu']);
    }
  });

  it('a row too long for a notification goes in the short form and is re-read', async () => {
    const target = agents[0];
    const big = record(target.id, 'agent-0', target.ipv4, 2, { padding: 'x'.repeat(9_000) });
    const readsBefore = two.reads.n;
    await outsider.query('UPDATE records SET json = $1, seq = 2 WHERE network = $2 AND id = $3', [JSON.stringify(big.record), NET, target.id]);
    await waitFor(() => two.fleet.net(NET).agents.get(target.id)?.view.record.seq === 2, { what: 'the re-read record on the other feed', intervalMs: 5 });
    const lastHeard = heard.filter((p) => p.includes(target.id)).pop()!;
    console.log(`record row of ${JSON.stringify(big.record).length} chars: notification ${lastHeard.length} chars, other feed re-reads ${two.reads.n - readsBefore}`);
    expect(lastHeard.length).toBeLessThan(400);
    expect(two.reads.n - readsBefore).toBe(1);
  });

  it("a key rotation reaches the other feed: a chain longer than the one it holds is re-read, the next publish is carried again", async () => {
    const target = agents[4];
    const key = randomBytes(32).toString('base64');
    const readsBefore = two.reads.n;
    const rotated = await one.store.putRecord(NET, record(target.id, 'agent-4', target.ipv4, 2, { key }), Date.now(), { id: target.id, chain: [{ statement: 1 }], key });
    expect(rotated.ok).toBe(true);
    await waitFor(() => two.fleet.rotated.get(target.id)?.chain.length === 1, { what: 'the chain on the other feed', intervalMs: 5 });
    const readsForRotation = two.reads.n - readsBefore;
    await one.store.putRecord(NET, record(target.id, 'agent-4', target.ipv4, 3, { key }), Date.now());
    await waitFor(() => two.fleet.net(NET).agents.get(target.id)?.view.record.seq === 3, { what: 'seq 3 on the other feed', intervalMs: 5 });
    console.log(`rotation: other feed re-reads ${readsForRotation}, holds the key ${Buffer.from(two.fleet.currentKey(target.id) ?? []).toString('base64') === key}; next publish: ${two.reads.n - readsBefore - readsForRotation} re-reads`);
    expect(readsForRotation).toBe(1);
    expect(Buffer.from(two.fleet.currentKey(target.id)!).toString('base64')).toBe(key);
    expect(two.reads.n - readsBefore - readsForRotation).toBe(0);
  });

  it('a role that merely connects cannot mark an agent offline with a made-up liveness notification', async () => {
    const victim = agents[3];
    const forged = { t: 'live', n: NET, i: victim.id, o: false, s: Date.now() + 3_600_000 };
    // The form before migration 3 (applied as it came), and the same without a MAC now.
    await notify(JSON.stringify(forged));
    await notify(`..${JSON.stringify(forged)}`);
    await settle();
    const online = two.fleet.net(NET).agents.get(victim.id)?.view.online;
    console.log(`victim online on the other feed after 2 forged 'live' notifications: ${online}; offline events: ${two.events.filter((e) => e.kind === 'offline').length}`);
    expect(online).toBe(true);
  });

  it('a forged, unauthenticated or malformed notification is counted and dropped; none is applied and the feed keeps following', async () => {
    const victim = agents[1];
    const before = two.feed.stats();
    const eventsBefore = two.events.length;
    const [{ k }] = (await outsider.query<{ k: Buffer }>('SELECT k FROM feed_key')).rows;
    const mac = (body: string) => createHmac('sha256', k).update(body, 'utf8').digest('hex');
    const evilMember = JSON.stringify({ t: 'member', n: NET, i: agentIdOf(randomBytes(32)), q: 1e9, name: 'evil', ipv4: '100.64.9.9', joined: 1, tags: '["admin"]' });
    const offline = (s: number) => ({ t: 'live', n: NET, i: victim.id, o: false, s });
    const future = Date.now() + 3_600_000;
    const sent = {
      // A role without the key: a made-up MAC, no MAC, the pre-migration-3 JSON form.
      forged: [`.${'0'.repeat(64)}.${evilMember}`, `.${mac('other')}.${JSON.stringify(offline(future))}`],
      unauthenticated: [`..${evilMember}`, `..${JSON.stringify(offline(future))}`],
      malformed: [
        'garbage', JSON.stringify(offline(future)), `x.y.z`, `..`, `.${mac('[1]')}.[1]`, `${'i'.repeat(65)}..{}`,
        // With the key (a role that may read feed_key): still type-checked and bounded.
        ...[{ t: 'record', n: NET, i: victim.id, q: 1, seq: 9, rec: { id: 'someone-else', seq: 9 }, sig: 's', o: true, s: 1, k: 0 },
          { t: 'member', n: NET, i: victim.id, q: 1, name: 7, ipv4: '1', joined: 1, tags: '[]' }, { t: 'live', n: NET, i: victim.id, o: 'no', s: 1 },
          { t: 'action', q: -1 }, { t: 'nope', n: NET, i: victim.id }, { ...offline(future), i: 'x'.repeat(257) }].map((b) => `.${mac(JSON.stringify(b))}.${JSON.stringify(b)}`),
      ],
    };
    for (const p of [...sent.forged, ...sent.unauthenticated, ...sent.malformed]) await notify(p);
    // A genuine change after them: the feed still follows.
    const late = await register(one.store, 'after-the-flood');
    await waitFor(() => two.fleet.net(NET).agents.has(late.id), { what: 'the change after the bad ones', intervalMs: 5 });
    const s = two.feed.stats();
    const got = { forged: s.forged - before.forged, unauthenticated: s.unauthenticated - before.unauthenticated, malformed: s.malformed - before.malformed };
    const state = two.fleet.net(NET);
    console.log(`sent forged ${sent.forged.length} / unauthenticated ${sent.unauthenticated.length} / malformed ${sent.malformed.length}; counted ${JSON.stringify(got)}; `
      + `victim still online: ${state.agents.get(victim.id)?.view.online}; "evil" member: ${state.byName.has('evil')}; events other than the late upsert: ${two.events.length - eventsBefore - 1}`);
    expect(got).toEqual({ forged: sent.forged.length, unauthenticated: sent.unauthenticated.length, malformed: sent.malformed.length });
    expect(state.agents.get(victim.id)?.view.online).toBe(true);
    expect(state.byName.has('evil')).toBe(false);
    expect(two.events.length - eventsBefore).toBe(1);
  });

  it('a genuine notification replayed later changes nothing: an older record seq is a no-op, a member removed since is re-read, not brought back', async () => {
    const target = agents[2];
    const oldRecord = heard.find((p) => p.includes('"record"') && p.includes(target.id));
    const oldMember = heard.find((p) => p.includes('"member"') && p.includes(target.id));
    expect(oldRecord && oldMember).toBeTruthy();
    await one.store.putRecord(NET, record(target.id, 'agent-2', target.ipv4, 5), Date.now());
    await waitFor(() => two.fleet.net(NET).agents.get(target.id)?.view.record.seq === 5, { what: 'seq 5 on the other feed', intervalMs: 5 });
    const eventsBefore = two.events.length;
    await notify(oldRecord!);
    await settle();
    const seqAfterReplay = two.fleet.net(NET).agents.get(target.id)?.view.record.seq;

    // Removed by an operator; the server's OperatorSync applied the removal (seq) before the replay arrives.
    const removed = await one.store.removeMember(NET, target.id, false, Date.now());
    expect(removed.ok).toBe(true);
    two.fleet.net(NET).removeMember(target.id);
    two.sync.appliedSeq = await one.store.lastActionSeq();
    const readsBefore = two.reads.n;
    await notify(oldMember!);
    await settle();
    const back = two.fleet.net(NET).members.has(target.id);
    console.log(`replayed record seq 1 over seq 5: seq now ${seqAfterReplay}, events ${two.events.length - eventsBefore}; replayed join of a removed member: back in memory ${back}, re-reads ${two.reads.n - readsBefore}`);
    expect(seqAfterReplay).toBe(5);
    expect(two.events.length - eventsBefore).toBe(0);
    expect(back).toBe(false);
    expect(two.reads.n - readsBefore).toBe(1);
  });

  it('a replayed "online" after a leave at the same time changes nothing (a leave keeps last_seen)', async () => {
    const target = agents[3];
    let ts = Date.now();
    const live = (online: boolean, lastSeen: number) => one.store.setOnline({ network: NET, id: target.id, online, lastSeen, timestamp: ++ts, now: Date.now() });
    const view = () => two.fleet.net(NET).agents.get(target.id)?.view;
    const seen = Date.now() + 60_000; // newer than anything the other feed holds
    expect((await live(false, view()!.lastSeen)).ok).toBe(true);
    await waitFor(() => view()?.online === false, { what: 'offline on the other feed', intervalMs: 5 });
    expect((await live(true, seen)).ok).toBe(true); // back online: a newer time
    await waitFor(() => view()?.online === true, { what: 'online again on the other feed', intervalMs: 5 });
    const online = await waitFor(() => heard.filter((p) => /"t"\s*:\s*"live"/.test(p) && p.includes(target.id) && /"o"\s*:\s*true/.test(p)).pop(), { what: 'the "online" notification, as a listener hears it', intervalMs: 5 });
    expect((await live(false, seen)).ok).toBe(true); // a leave: the same last_seen
    await waitFor(() => view()?.online === false, { what: 'offline again on the other feed', intervalMs: 5 });
    const eventsBefore = two.events.length;
    await notify(online!);
    await settle();
    console.log(`replayed "online" after a leave: online ${view()?.online}, events ${two.events.length - eventsBefore}`);
    expect(view()?.online).toBe(false);
    expect(two.events.length - eventsBefore).toBe(0);
  });

  it("a database URL with startup options of its own keeps them, and the instance's (node-postgres lets the URL's override the pool's)", async () => {
    const store = await PgStore.open(`${url}${url.includes('?') ? '&' : '?'}options=${encodeURIComponent('-c search_path=public')}`);
    try {
      const pool = (store as unknown as { pool: pgLib.Pool }).pool;
      const { rows } = await pool.query("SELECT current_setting('agentvpn.instance', true) AS instance, current_setting('search_path') AS path");
      expect(rows[0]).toEqual({ instance: store.instance, path: 'public' });
    } finally {
      await store.close();
    }
  });
});
