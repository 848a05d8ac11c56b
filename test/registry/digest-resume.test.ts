// Event streams resume by view digest where no resume point can be taken (the registry restarted,
// or the reader failed over to another instance): the reader sends the digest of the views it
// holds, and gets `resumed`, the buckets that differ (the IDs each holds now) and their agents,
// instead of the whole fleet; its view then equals the registry's. A malformed digest, or one
// that differs in more than half the buckets, gets a snapshot. The hub on a real HTTP server,
// then a real registry on SQLite restarted under the real client.
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { RegistryClient, type AgentView, type WatchHandlers } from '../../src/registry/client.js';
import type { EventHub } from '../../src/registry/events.js';
import { signRecord } from '../../src/registry/record.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { SqliteStore } from '../../src/registry/sqlite-store.js';
import { ViewDigest } from '../../src/registry/view-digest.js';
import { FakeEntry, HubRig, NET, SseReader } from './event-stream-rig.js';
import { makeAgent, recordFor, type TestAgent } from './hostile-helpers.js';
import { waitFor } from '../../src/lab/proc.js';

describe('the event hub resumes a reader by its view digest', () => {
  let rig: HubRig;
  afterEach(async () => {
    await rig.close();
  });

  const settle = async (h: EventHub) => {
    for (let i = 0; i < 200 && (h.stats().behind > 0 || h.stats().unsentChars > 0); i++) await sleep(10);
    await sleep(100);
  };
  const digestOf = (agents: Iterable<FakeEntry>) => {
    const d = new ViewDigest();
    for (const e of agents) d.set(e.view);
    return d.encode();
  };

  it('a digest of a view from before a restart gets only the buckets that differ, and the view ends equal', async () => {
    rig = new HubRig();
    const agents = new Map<string, FakeEntry>();
    const h = await rig.serve(agents, () => '{"version":3}', { count: 300 });
    const reader = new SseReader();
    reader.read(await rig.open());
    await settle(h);
    expect(reader.kinds.snapshot).toBe(1);
    const held = digestOf(agents.values());
    // Meanwhile (another process, say): 3 agents changed, 2 removed, 1 new, 1 went offline.
    for (const id of ['a1', 'a2', 'a3']) agents.set(id, new FakeEntry(id, 1));
    for (const id of ['a10', 'a11']) agents.delete(id);
    agents.set('new', new FakeEntry('new', 1));
    agents.set('a20', new FakeEntry('a20', 0, false));
    // A point of another process (or none) does not resume; the digest does.
    reader.read(await rig.open('000000000000.5.' + '0'.repeat(32), 't', held));
    await settle(h);
    console.log(`resume by digest read ${JSON.stringify(reader.kinds)} (${reader.chars} characters); hub ${JSON.stringify(h.stats())}`);
    expect(reader.kinds.snapshot).toBeUndefined();
    expect(reader.kinds.resumed).toBe(1);
    expect(reader.kinds.bucket).toBeGreaterThanOrEqual(1);
    expect(reader.kinds.bucket).toBeLessThanOrEqual(7);
    expect(reader.kinds.upsert).toBeLessThanOrEqual(7 * 4); // the differing buckets' agents (~1.2 each), not 300
    expect(h.stats().digestResumed).toBe(1);
    expect(reader.views.size).toBe(agents.size);
    for (const [id, e] of agents) expect(reader.views.get(id), id).toEqual({ version: e.version, online: e.online });
    expect(reader.policy).toEqual({ version: 3 });

    // Changes after the hub built its digest are kept in it: a second reader with the new view is current.
    const e = new FakeEntry('a5', 2);
    agents.set('a5', e);
    h.publish(NET, 'upsert', e);
    agents.delete('a6');
    h.publishRemoved(NET, 'a6');
    const current = new SseReader();
    current.read(await rig.open(undefined, 't', digestOf(agents.values())));
    await settle(h);
    console.log(`a reader that is up to date read ${JSON.stringify(current.kinds)}`);
    expect(current.kinds).toEqual({ resumed: 1, policy: 1 });
  });

  it('a malformed digest, or one that differs in more than half the buckets, gets a snapshot', async () => {
    rig = new HubRig();
    const agents = new Map<string, FakeEntry>();
    const h = await rig.serve(agents, () => 'null', { count: 300 });
    const good = digestOf(agents.values());
    const tries: Array<[string, string]> = [
      ['too short', good.slice(1)], ['not base64url', `${good.slice(0, -1)}=`], ['too long', `${good}AAAA`],
      ['an empty view (300 agents differ)', new ViewDigest().encode()],
    ];
    const answers: Record<string, string[]> = {};
    for (const [what, digest] of tries) {
      const r = new SseReader();
      r.read(await rig.open(undefined, 't', digest));
      await settle(h);
      answers[what] = Object.keys(r.kinds);
      expect(r.kinds.snapshot, what).toBe(1);
      expect(r.views.size, what).toBe(300);
    }
    console.log(`answers: ${JSON.stringify(answers)}`);
    expect(h.stats().digestResumed).toBe(0);
  });
});

describe('the agent\'s client resumes by digest after the registry restarts', () => {
  let dir: string;
  let reg: RunningRegistry | undefined;
  const agents: TestAgent[] = [];
  const closers: Array<() => unknown> = [];

  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    for (const a of agents.splice(0)) a.client.close();
    await reg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('no second snapshot: an operator\'s removal while it was down, and a publish since, arrive; the view equals a fresh snapshot', async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-digest-'));
    const db = join(dir, 'registry.db');
    reg = await startRegistry({ db, network: NET });
    const port = reg.port;
    const token = await reg.createToken({ network: NET });
    for (let i = 0; i < 40; i++) agents.push(await makeAgent(reg.url, NET, `peer-${i}`, token));
    const seen = new Map<string, AgentView>();
    const calls = { snapshot: 0, resumed: 0, gone: [] as string[] };
    const handlers: WatchHandlers = {
      snapshot: (views) => {
        calls.snapshot++;
        seen.clear();
        for (const v of views) seen.set(v.record.id, v);
      },
      change: (_k, v) => seen.set(v.record.id, v),
      removed: (id) => seen.delete(id),
      gone: (id) => {
        calls.gone.push(id);
        seen.delete(id);
      },
      resumed: () => calls.resumed++,
    };
    const watcher = new RegistryClient({ url: reg.url, identity: agents[0].identity, network: NET });
    closers.push(() => watcher.close());
    const w = watcher.watch(handlers);
    closers.push(() => w.close());
    await waitFor(() => seen.size === 40, { what: 'the snapshot', intervalMs: 20 });

    await reg.stop();
    // While it is down, an operator removes peer-5 on the database (what `agentvpn registry remove --db` does).
    const removed = agents[5].identity.id;
    const store = new SqliteStore(db);
    expect((await store.removeMember(NET, 'peer-5', false, Date.now())).ok).toBe(true);
    await store.close();
    reg = await startRegistry({ db, network: NET, listen: `127.0.0.1:${port}` });
    const a = agents[7];
    await a.client.publish(signRecord(a.identity, recordFor(a.identity, a.join, 'peer-7', { seq: 2, endpoints: ['192.0.2.7:51820'] })));
    await waitFor(() => calls.resumed === 1 && !seen.has(removed) && seen.get(a.identity.id)?.record.seq === 2, { what: 'the resume, the removal and the new record', intervalMs: 20 });

    const fresh = new Map<string, AgentView>();
    const check = new RegistryClient({ url: reg.url, identity: agents[1].identity, network: NET });
    closers.push(() => check.close());
    const cw = check.watch({ snapshot: (views) => views.forEach((v) => fresh.set(v.record.id, v)), change: () => {} });
    closers.push(() => cw.close());
    await waitFor(() => fresh.size === 39, { what: 'a fresh snapshot', intervalMs: 20 });
    console.log(`watcher: ${JSON.stringify({ ...calls, gone: calls.gone.length })}; restarted registry streams ${JSON.stringify(reg.stats().streams)}`);
    expect(calls.snapshot).toBe(1);
    expect(calls.gone).toEqual([removed]);
    expect(reg.stats().streams.digestResumed).toBe(1);
    expect([...seen.keys()].sort()).toEqual([...fresh.keys()].sort());
    for (const [id, v] of fresh) expect({ seq: seen.get(id)?.record.seq, online: seen.get(id)?.online }, id).toEqual({ seq: v.record.seq, online: v.online });
  });
});
