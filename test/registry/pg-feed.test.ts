// Two registry instances (in this process) on one real PostgreSQL: the change feed keeps each
// one's memory and event stream in step with the other. Measured: how long after a publish on
// instance 1 returns its upsert shows on instance 2's stream; that heartbeats sent to instance 1
// keep the agent online on instance 2 (its sweep would mark it offline otherwise); and that
// changes made while instance 2's LISTEN connection is down show once it reconnects; a client's
// stream that moves to the other instance resumes there by its view digest.
import { request, type IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postgresUnavailableReason, startPostgres, type LabPostgres } from '../../src/lab/postgres.js';
import { Identity } from '../../src/identity/identity.js';
import { RegistryClient } from '../../src/registry/client.js';
import { signRecord } from '../../src/registry/record.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { makeAgent, recordFor } from './hostile-helpers.js';

const canRun = process.getuid?.() === 0 && postgresUnavailableReason() === null;
if (process.env.CI && !canRun) throw new Error(`pg-feed tests need root and PostgreSQL: ${postgresUnavailableReason() ?? 'not root'}`);

const NET = 'feed';
const OFFLINE_AFTER_MS = 3_000;

interface StreamEvent { t: number; event: string; name: string; online: boolean }

/** An event stream of `reg`, collecting (time, event, agent name). */
function watch(reg: RunningRegistry, token: string): Promise<{ events: StreamEvent[]; close(): void }> {
  return new Promise((resolve, reject) => {
    const events: StreamEvent[] = [];
    const req = request(`${reg.url}/v1/events?network=${NET}`, { headers: { authorization: `Bearer ${token}` } }, (res: IncomingMessage) => {
      if (res.statusCode !== 200) return reject(new Error(`events: HTTP ${res.statusCode}`));
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        buf += c;
        for (let i; (i = buf.indexOf('\n\n')) >= 0; buf = buf.slice(i + 2)) {
          const frame = buf.slice(0, i);
          const event = /^event: (.*)$/m.exec(frame)?.[1];
          const data = /^data: (.*)$/m.exec(frame)?.[1];
          if (!event || !data) continue;
          const d = JSON.parse(data) as { agents?: Array<{ record: { name: string }; online: boolean }>; agent?: { record: { name: string }; online: boolean } };
          for (const a of d.agents ?? (d.agent ? [d.agent] : [])) events.push({ t: Date.now(), event, name: a.record.name, online: a.online });
        }
      });
      resolve({ events, close: () => req.destroy() });
    });
    req.on('error', () => undefined);
    req.end();
  });
}

async function until<T>(what: string, fn: () => T | undefined, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

describe.runIf(canRun)('registry instances on one PostgreSQL follow each other', () => {
  let pg: LabPostgres;
  let one: RunningRegistry;
  let two: RunningRegistry;
  let token: string;
  const opts = () => ({ listen: '127.0.0.1:0', db: pg.url, network: NET, offlineAfterMs: OFFLINE_AFTER_MS });

  beforeAll(async () => {
    pg = await startPostgres();
    one = await startRegistry(opts());
    two = await startRegistry(opts());
    token = await one.createToken({ network: NET });
  }, 60_000);

  afterAll(async () => {
    await one?.stop();
    await two?.stop();
    await pg?.stop();
  });

  it("a publish on instance 1 shows on instance 2's stream within 1 s (20 agents: p50 and max)", async () => {
    const stream = await watch(two, token);
    try {
      const lags: number[] = [];
      for (let i = 0; i < 20; i++) {
        const name = `lat-${i}`;
        await makeAgent(one.url, NET, name, token);
        const published = Date.now();
        const seen = await until(`${name} on instance 2`, () => stream.events.find((e) => e.name === name && e.event === 'upsert'), 5_000);
        lags.push(Math.max(0, seen.t - published));
      }
      console.log(`propagation instance 1 -> instance 2's stream, 20 publishes: p50 ${quantile(lags, 0.5)} ms, max ${Math.max(...lags)} ms`);
      expect(Math.max(...lags)).toBeLessThan(1_000);
      // Operators see the feed in /v1/stats: instance 2 applied instance 1's joins and publishes; 1 skipped its own.
      const feedOf = async (r: RunningRegistry) => ((await (await fetch(`${r.url}/v1/stats?network=${NET}`, { headers: { authorization: `Bearer ${token}` } })).json()) as {
        changeFeed: { connected: boolean; own: number; applied: number; forged: number };
      }).changeFeed;
      const [feedOne, feedTwo] = [await feedOf(one), await feedOf(two)];
      console.log(`/v1/stats changeFeed: instance 1 ${JSON.stringify(feedOne)}; instance 2 ${JSON.stringify(feedTwo)}`);
      expect(feedTwo).toMatchObject({ connected: true, forged: 0 });
      expect(feedTwo.applied).toBeGreaterThanOrEqual(40);
      expect(feedOne.own).toBeGreaterThanOrEqual(40);
    } finally {
      stream.close();
    }
  });

  it('heartbeats sent to instance 1 keep the agent online on instance 2', async () => {
    const a = await makeAgent(one.url, NET, 'beating', token);
    const stream = await watch(two, token);
    try {
      // Two offline periods of heartbeats to instance 1 only.
      for (let t = 0; t < (2 * OFFLINE_AFTER_MS) / 500; t++) {
        await a.client.heartbeat();
        await new Promise((r) => setTimeout(r, 500));
      }
      const offline = stream.events.filter((e) => e.name === 'beating' && e.event === 'offline').length;
      console.log(`'offline' events for an agent heartbeating to the other instance, over ${2 * OFFLINE_AFTER_MS} ms: ${offline}`);
      expect(offline).toBe(0);
      await a.client.leave();
      await until('the leave on instance 2', () => stream.events.find((e) => e.name === 'beating' && e.event === 'offline'), 2_000);
    } finally {
      stream.close();
    }
  });

  it("changes made while instance 2's LISTEN connection is down show once it reconnects", async () => {
    const stream = await watch(two, token);
    try {
      const killed = await pg.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'agentvpn-registry-feed'");
      const lostAt = Date.now();
      for (let i = 0; i < 3; i++) await makeAgent(one.url, NET, `missed-${i}`, token);
      for (let i = 0; i < 3; i++) await until(`missed-${i} on instance 2`, () => stream.events.find((e) => e.name === `missed-${i}`), 10_000);
      console.log(`feed connections terminated: ${killed.trim()}; 3 agents published meanwhile were on instance 2's stream ${Date.now() - lostAt} ms after`);
    } finally {
      stream.close();
    }
  });

  it('a client given two instances carries on when the one it uses stops: no request fails, its stream moves and resumes by digest', async () => {
    const pair = [await startRegistry(opts()), await startRegistry(opts())];
    const identity = Identity.generate();
    const client = new RegistryClient({ url: pair.map((r) => r.url).join(','), identity, network: NET, timeoutMs: 5_000 });
    let connects = 0;
    const got = { snapshot: 0, resumed: 0 };
    let watcher: { close(): void } | undefined;
    try {
      const join = await client.join('mover', token);
      await client.publish(signRecord(identity, recordFor(identity, join, 'mover')));
      watcher = client.watch({
        snapshot: () => void got.snapshot++, change: () => undefined, gone: () => undefined, resumed: () => void got.resumed++, connected: () => void connects++,
      });
      await until('the stream', () => (connects === 1 ? true : undefined), 5_000);
      const used = pair.findIndex((r) => r.url === client.url);
      const stoppedAt = Date.now();
      await pair[used].stop();
      let failed = 0;
      for (let i = 0; i < 10; i++) await client.heartbeat().catch(() => void failed++);
      const reconnected = await until('the stream on the other instance', () => (connects === 2 ? Date.now() : undefined), 10_000);
      await until('the resume there', () => (got.resumed === 1 ? true : undefined), 5_000);
      console.log(`client with 2 instances after the one it used stopped: ${failed}/10 heartbeats failed, now at the other: ${client.url === pair[1 - used].url}, stream back after ${reconnected - stoppedAt} ms; stream ${JSON.stringify(got)}, the other instance's streams ${JSON.stringify(pair[1 - used].stats().streams)}`);
      expect(failed).toBe(0);
      expect(client.url).toBe(pair[1 - used].url);
      // The other instance took the stream's view digest: no second snapshot of the fleet.
      expect(got.snapshot).toBe(1);
      expect(pair[1 - used].stats().streams.digestResumed).toBe(1);
    } finally {
      watcher?.close();
      client.close();
      for (const r of pair) await r.stop();
    }
  });
});
