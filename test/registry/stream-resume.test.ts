// Event streams resume: a reader that reconnects with its Last-Event-ID to the same registry gets
// what it missed (removals, the policy, one view per agent changed) instead of the whole fleet; a
// forged, foreign, another credential's or too-old resume point gets a snapshot. Real HTTP, and
// the real client through a TCP proxy that cuts its connection.
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { signRecord } from '../../src/registry/record.js';
import { AdminClient } from '../../src/registry/admin-client.js';
import { RegistryClient, type AgentView, type WatchHandlers } from '../../src/registry/client.js';
import type { EventHub } from '../../src/registry/events.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { cutProxy, type CutProxy } from './cut-proxy.js';
import { FakeEntry, HubRig, NET, SseReader } from './event-stream-rig.js';
import { makeAgent, recordFor, type TestAgent } from './hostile-helpers.js';
import { waitFor } from '../../src/lab/proc.js';

describe('event streams resume from Last-Event-ID', () => {
  let rig: HubRig;

  afterEach(async () => {
    await rig.close();
  });

  const serve = async (agents: Map<string, FakeEntry>, policyJson: () => string, o = { count: 2000 } as { count: number; keepAliveMs?: number }) => {
    rig = new HubRig();
    return { h: await rig.serve(agents, policyJson, o) };
  };
  const settle = async (h: EventHub) => {
    for (let i = 0; i < 200 && (h.stats().behind > 0 || h.stats().unsentChars > 0); i++) await sleep(10);
    await sleep(100);
  };

  it('a reconnect with the last id gets only what changed: removals, the policy, one view per changed agent', async () => {
    const agents = new Map<string, FakeEntry>();
    let policyJson = '{"version":1}';
    const { h } = await serve(agents, () => policyJson);
    const reader = new SseReader();
    const first = await rig.open();
    reader.read(first);
    const bump = (id: string) => {
      const e = new FakeEntry(id, (agents.get(id)?.version ?? 0) + 1);
      agents.set(id, e);
      h.publish(NET, 'upsert', e);
    };
    for (let i = 0; i < 500 && reader.lastId === undefined; i++) await sleep(10);
    const resumeFrom = reader.lastId; // given when the stream turned live after its snapshot
    bump('a1'); // live
    first.destroy();
    await sleep(50);
    // While it is away: 100 changes to 40 agents, 2 removals, one agent removed and back, a new policy.
    for (let i = 0; i < 100; i++) bump(`a${(i * 7) % 40}`);
    for (const id of ['a500', 'a501', 'a502']) {
      agents.delete(id);
      h.publishRemoved(NET, id);
    }
    bump('a502');
    h.publishPolicy(NET, (policyJson = '{"version":2}'));

    reader.read(await rig.open(resumeFrom));
    await settle(h);
    console.log(`resumed from ${resumeFrom}: read ${JSON.stringify(reader.kinds)}; hub ${JSON.stringify(h.stats())}`);
    expect(resumeFrom).toMatch(/^[0-9a-f]{12}\.\d+\.[0-9a-f]{32}$/);
    expect(reader.kinds.resumed).toBe(1);
    expect(reader.kinds.snapshot).toBeUndefined();
    expect(reader.kinds.upsert).toBeLessThanOrEqual(41); // one view each for the 40 agents and a502, not the fleet
    expect(h.stats().resumed).toBe(1);
    expect(reader.views.size).toBe(agents.size);
    for (const [id, e] of agents) expect(reader.views.get(id)?.version, id).toBe(e.version);
    expect(reader.policy).toEqual({ version: 2 });
  });

  it('a forged, foreign, another credential\'s or too-old resume point gets a snapshot', async () => {
    const agents = new Map<string, FakeEntry>();
    const { h } = await serve(agents, () => 'null');
    const reader = new SseReader();
    const first = await rig.open();
    reader.read(first);
    const e = new FakeEntry('a1', 1);
    agents.set('a1', e);
    h.publish(NET, 'upsert', e);
    for (let i = 0; i < 500 && reader.lastId === undefined; i++) await sleep(10);
    const good = reader.lastId!;
    first.destroy();
    const [epoch, seq, mac] = good.split('.');
    const answers: Record<string, string[]> = {};
    const ok = new SseReader();
    ok.read(await rig.open(good));
    await settle(h);
    answers['the point as given'] = Object.keys(ok.kinds);
    expect(ok.kinds.resumed).toBe(1);
    const tries: Array<[string, string, string?]> = [
      ['another registry', `000000000000.${seq}.${mac}`], ['from the future', `${epoch}.${Number(seq) + 5}.${mac}`],
      ['an earlier point, MAC made up (to read old removals)', `${epoch}.0.${'0'.repeat(32)}`], ['garbage', 'x'.repeat(50)],
      ["another credential's point", good, 'other'],
    ];
    for (const [what, id, credential] of tries) {
      const r = new SseReader();
      r.read(await rig.open(id, credential));
      await settle(h);
      answers[what] = Object.keys(r.kinds);
      expect(r.kinds.snapshot, what).toBe(1);
    }
    // More removals than the history keeps: the old point no longer reaches back.
    for (let i = 0; i < 4200; i++) h.publishRemoved(NET, `gone-${i}`);
    const late = new SseReader();
    late.read(await rig.open(good));
    await settle(h);
    answers['past 4,096 removals'] = Object.keys(late.kinds);
    console.log(`answers: ${JSON.stringify(answers)}; hub ${JSON.stringify(h.stats())}`);
    expect(late.kinds.snapshot).toBe(1);
    expect(h.stats().resumed).toBe(1); // the good point itself, tried first
  });

  it('the point given to a reader resumes for that reader only, and after a keep-alive a newer point is given', async () => {
    const agents = new Map<string, FakeEntry>();
    const { h } = await serve(agents, () => 'null', { count: 10, keepAliveMs: 150 });
    const reader = new SseReader();
    const first = await rig.open();
    reader.read(first);
    for (let i = 0; i < 500 && reader.lastId === undefined; i++) await sleep(10);
    const atLive = reader.lastId;
    const e = new FakeEntry('a1', 1);
    agents.set('a1', e);
    h.publish(NET, 'upsert', e);
    for (let i = 0; i < 500 && reader.lastId === atLive; i++) await sleep(10); // the next keep-alive (150 ms) brings a newer point
    const later = reader.lastId;
    first.destroy();
    const again = new SseReader();
    again.read(await rig.open(later));
    await settle(h);
    console.log(`points: at live ${atLive}, after keep-alives ${later}; the resume read ${JSON.stringify(again.kinds)}`);
    expect(later).not.toBe(atLive);
    expect(Number(later!.split('.')[1])).toBeGreaterThan(Number(atLive!.split('.')[1]));
    expect(again.kinds).toEqual({ resumed: 1 }); // nothing changed since the newer point: no view resent
  });
});

describe('the agent\'s client resumes its stream after a cut connection', () => {
  let dir: string;
  let reg: RunningRegistry;
  let proxy: CutProxy | undefined;
  const agents: TestAgent[] = [];
  const closers: Array<() => unknown> = [];

  afterEach(async () => {
    for (const close of closers.splice(0).reverse()) await close();
    for (const a of agents.splice(0)) a.client.close();
    proxy?.close();
    await reg?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A registry with `n` agents ("peer-0"...), and a proxy in front of it that the test can cut. */
  const fleetBehindProxy = async (n: number) => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-resume-'));
    reg = await startRegistry({ db: join(dir, 'registry.db'), network: NET });
    const token = await reg.createToken({ network: NET });
    for (let i = 0; i < n; i++) agents.push(await makeAgent(reg.url, NET, `peer-${i}`, token));
    proxy = await cutProxy(reg.port);
    return token;
  };

  /** A watch that counts what it was given; its view of the fleet in `seen`. */
  const countingWatch = (client: RegistryClient, from: Parameters<RegistryClient['watch']>[1] = null) => {
    const seen = new Map<string, AgentView>();
    const calls = { snapshot: 0, resumed: 0, disconnected: 0 };
    const handlers: WatchHandlers = {
      snapshot: (views) => {
        calls.snapshot++;
        seen.clear();
        for (const v of views) seen.set(v.record.id, v);
      },
      change: (_k, v) => seen.set(v.record.id, v),
      resumed: () => calls.resumed++,
      disconnected: () => calls.disconnected++,
    };
    const w = client.watch(handlers, from);
    closers.push(() => w.close());
    return { w, seen, calls };
  };

  it('no second snapshot: the watcher gets "resumed" and the changes it missed, and its view matches the registry', async () => {
    await fleetBehindProxy(5);
    const watcher = new RegistryClient({ url: proxy!.url, identity: agents[0].identity, network: NET });
    closers.push(() => watcher.close());
    const { seen, calls } = countingWatch(watcher);
    await waitFor(() => seen.size === 5, { what: 'the snapshot', intervalMs: 20 });
    const a = agents[1];
    await a.client.publish(signRecord(a.identity, recordFor(a.identity, a.join, 'peer-1', { seq: 2, endpoints: ['192.0.2.9:51820'] })));
    await waitFor(() => seen.get(a.identity.id)?.record.seq === 2, { what: 'seq 2 live', intervalMs: 20 });
    proxy!.cut();
    await waitFor(() => calls.disconnected === 1, { what: 'the disconnect', intervalMs: 20 });
    const b = agents[2];
    await b.client.publish(signRecord(b.identity, recordFor(b.identity, b.join, 'peer-2', { seq: 2, endpoints: ['192.0.2.10:51820'] })));
    await b.client.leave();
    await waitFor(() => calls.resumed === 1 && seen.get(b.identity.id)?.record.seq === 2 && seen.get(b.identity.id)?.online === false, { what: 'the resume and what it missed', intervalMs: 20 });
    console.log(`watcher: ${JSON.stringify(calls)}; registry streams ${JSON.stringify(reg.stats().streams)}`);
    expect(calls.snapshot).toBe(1);
    expect(reg.stats().streams.resumed).toBe(1);
    expect(seen.get(a.identity.id)?.record.seq).toBe(2);
  });

  it('a new watcher given the last one\'s point resumes; not once the agent was removed and admitted again', async () => {
    const token = await fleetBehindProxy(3);
    const me = agents[0];
    const first = countingWatch(me.client);
    await waitFor(() => first.seen.size === 3, { what: 'the snapshot', intervalMs: 20 });
    const point = first.w.resumePoint();
    first.w.close();
    expect(point?.id).toMatch(/^[0-9a-f]{12}\.\d+\.[0-9a-f]{32}$/);
    const b = agents[1];
    await b.client.publish(signRecord(b.identity, recordFor(b.identity, b.join, 'peer-1', { seq: 2 })));
    const second = countingWatch(me.client, point);
    await waitFor(() => second.calls.resumed === 1 && second.seen.get(b.identity.id)?.record.seq === 2, { what: 'the resume', intervalMs: 20 });
    expect(second.calls.snapshot).toBe(0);
    second.w.close();
    // Removed by an operator, then admitted again with a token: its old point names a former membership.
    await new AdminClient(reg.url, await reg.createAdminToken(), NET).remove('peer-0', false);
    await me.client.join('peer-0', token);
    const third = countingWatch(me.client, point);
    await waitFor(() => third.calls.snapshot === 1, { what: 'a snapshot instead', intervalMs: 20 });
    console.log(`resumed from the last watcher's point: ${JSON.stringify(second.calls)}; after removal and re-admission: ${JSON.stringify(third.calls)}`);
    expect(third.calls.resumed).toBe(0);
    expect(reg.stats().streams.resumed).toBe(1);
  });

  it.each(['end', 'reset'] as const)('a stream cut (%s) is tried once more at its own instance (which resumes it) before the next one', async (how) => {
    await fleetBehindProxy(3);
    // The other "instance" answers 503 and counts the event streams it is asked for.
    let otherAsked = 0;
    const other = createServer((req, res) => {
      if (req.url?.startsWith('/v1/events')) otherAsked++;
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"ok":false,"code":"UNAVAILABLE","message":"test"}');
    });
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => other.close(r)));
    const otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
    const client = new RegistryClient({ url: `${proxy!.url},${otherUrl}`, identity: agents[0].identity, network: NET });
    closers.push(() => client.close());
    const { seen, calls } = countingWatch(client);
    await waitFor(() => seen.size === 3, { what: 'the snapshot', intervalMs: 20 });
    const askedBefore = otherAsked;
    proxy!.cut(how);
    await waitFor(() => calls.resumed === 1, { what: 'the resume', intervalMs: 20 });
    console.log(`watcher ${JSON.stringify(calls)}; the other instance was asked ${otherAsked - askedBefore} times after the cut`);
    expect(otherAsked - askedBefore).toBe(0);
    expect(calls.snapshot).toBe(1);
  });

  it('a cut stream whose instance then takes connections but never answers fails over within seconds', async () => {
    await fleetBehindProxy(2);
    let frozenAt = 0;
    let otherAskedAt = 0;
    const other = createServer((req, res) => {
      if (req.url?.startsWith('/v1/events') && otherAskedAt === 0 && frozenAt > 0) otherAskedAt = Date.now();
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"ok":false,"code":"UNAVAILABLE","message":"test"}');
    });
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    closers.push(() => new Promise((r) => other.close(r)));
    const client = new RegistryClient({ url: `${proxy!.url},http://127.0.0.1:${(other.address() as AddressInfo).port}`, identity: agents[0].identity, network: NET });
    closers.push(() => client.close());
    const { seen } = countingWatch(client);
    await waitFor(() => seen.size === 2, { what: 'the snapshot', intervalMs: 20 });
    proxy!.freeze();
    frozenAt = Date.now();
    proxy!.cut();
    await waitFor(() => otherAskedAt > 0, { what: 'the other instance asked', intervalMs: 20 });
    // Backoff (<= 0.5 s), the retry's 2 s, backoff (<= 1 s): well under the 10 s request timeout it would otherwise wait.
    console.log(`failed over ${otherAskedAt - frozenAt} ms after the cut (the request timeout is 10 s)`);
    expect(otherAskedAt - frozenAt).toBeLessThan(7_000);
  });

  it('an id that could not go back in a header (a hostile registry or proxy) is ignored: the client reconnects without one', async () => {
    const identity = (await import('../../src/identity/identity.js')).Identity.generate();
    const seenHeaders: Array<string | undefined> = [];
    const fake = createServer((req, res) => {
      seenHeaders.push(req.headers['last-event-id'] as string | undefined);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      // A control character, then a good-looking one: only a printable id is kept, and a snapshot clears it.
      res.end(seenHeaders.length === 1 ? 'id: a\u0001b\n\n' : 'event: snapshot\ndata: {"agents":[],"policy":null}\n\nid: ok.1\n\n');
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    const client = new RegistryClient({ url: `http://127.0.0.1:${(fake.address() as AddressInfo).port}`, identity, network: NET });
    const w = client.watch({ snapshot: () => {}, change: () => {} });
    try {
      for (let i = 0; i < 500 && seenHeaders.length < 3; i++) await sleep(20);
      console.log(`last-event-id on each connect: ${JSON.stringify(seenHeaders)}`);
      expect(seenHeaders.slice(0, 3)).toEqual([undefined, undefined, 'ok.1']);
    } finally {
      w.close();
      client.close();
      fake.closeAllConnections();
      await new Promise((r) => fake.close(r));
    }
  });

  it('an event whose data is JSON null or a bare value (a hostile registry) ends the stream with REGISTRY_BAD_RESPONSE, not the process', async () => {
    const identity = (await import('../../src/identity/identity.js')).Identity.generate();
    const bodies = ['event: upsert\ndata: null\n\n', 'event: snapshot\ndata: 7\n\n', 'event: removed\ndata: "x"\n\n', 'event: bucket\ndata: {"bucket":999,"ids":[]}\n\n'];
    let served = 0;
    const fake = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(`event: snapshot\ndata: {"agents":[],"policy":null}\n\n${bodies[served++ % bodies.length]}`);
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    const client = new RegistryClient({ url: `http://127.0.0.1:${(fake.address() as AddressInfo).port}`, identity, network: NET });
    const errors: string[] = [];
    const w = client.watch({ snapshot: () => {}, change: () => {}, gone: () => {}, disconnected: (e) => errors.push((e as { code?: string }).code ?? e.message) });
    try {
      for (let i = 0; i < 500 && errors.length < bodies.length; i++) await sleep(20);
      console.log(`disconnects: ${JSON.stringify(errors)}`);
      expect(errors.slice(0, bodies.length)).toEqual(bodies.map(() => 'REGISTRY_BAD_RESPONSE'));
    } finally {
      w.close();
      client.close();
      fake.closeAllConnections();
      await new Promise((r) => fake.close(r));
    }
  });
});
