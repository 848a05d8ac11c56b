import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Identity } from '../../src/identity/identity.js';
import { RECORD_LIFETIME_MS, signRecord, type AgentRecord } from '../../src/registry/record.js';
import { RegistryClient, type AgentView, type JoinResult } from '../../src/registry/client.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';

const NET = 'lab';

function recordFor(id: Identity, join: JoinResult, name: string, caps: string[], seq = 1): AgentRecord {
  const now = Date.now();
  return {
    v: 1, network: join.network, id: id.id, name, wgPublicKey: Buffer.from(id.wgPublicKey).toString('base64'),
    ipv4: join.ipv4, ipv6: join.ipv6, endpoints: ['192.0.2.7:51820'], capabilities: caps, seq, issuedAt: now, expiresAt: now + RECORD_LIFETIME_MS,
  };
}

/** Polls until `check` holds; the deadline is generous (shared 2-core machines), the assertions are not about timing. */
async function until(check: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe('registry client', () => {
  let dir: string;
  let reg: RunningRegistry;
  let token: string;
  const clients: RegistryClient[] = [];

  const start = (listen = '127.0.0.1:0', offlineAfterMs?: number) =>
    startRegistry({ db: join(dir, 'registry.db'), network: NET, listen, offlineAfterMs });

  function clientFor(identity = Identity.generate(), url = reg.url): RegistryClient {
    const c = new RegistryClient({ url, identity, network: NET, timeoutMs: 5000 });
    clients.push(c);
    return c;
  }

  async function agent(name: string, caps: string[]): Promise<{ identity: Identity; client: RegistryClient; join: JoinResult }> {
    const identity = Identity.generate();
    const client = clientFor(identity);
    const j = await client.join(name, token);
    await client.publish(signRecord(identity, recordFor(identity, j, name, caps)));
    return { identity, client, join: j };
  }

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-client-'));
    reg = await start();
    token = await reg.createToken();
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('joins, publishes, lists by capability and gets by name', async () => {
    const planner = await agent('planner', ['llm.plan']);
    await agent('worker', ['llm.inference@1;model=llama3']);
    await agent('embedder', ['llm.inference@2;model=bge']);
    expect(planner.join).toMatchObject({ network: NET, ipv4: '100.64.0.1', pool: '100.64.0.0/10' });

    const names = (views: AgentView[]) => views.map((v) => v.record.name).sort();
    expect(names(await planner.client.list())).toEqual(['embedder', 'planner', 'worker']);
    expect(names(await planner.client.list({ cap: 'llm.inference' }))).toEqual(['embedder', 'worker']);
    expect(names(await planner.client.list({ cap: 'llm.inference@1' }))).toEqual(['worker']);
    expect(names(await planner.client.list({ cap: 'llm.inference;model=bge' }))).toEqual(['embedder']);
    expect(names(await planner.client.list({ cap: 'llm' }))).toEqual([]);
    expect(names(await planner.client.list({ online: true, name: 'worker' }))).toEqual(['worker']);
    const worker = await planner.client.get('worker');
    expect(worker.record.capabilities).toEqual(['llm.inference@1;model=llama3']);
    expect(worker.online).toBe(true);
    expect((await planner.client.get(planner.identity.id)).record.name).toBe('planner');
    await planner.client.heartbeat();
    await planner.client.leave();
    expect((await planner.client.get('planner')).online).toBe(false);
  });

  it("reports the registry's refusals with code and hint, and an unreachable registry as REGISTRY_UNREACHABLE", async () => {
    await agent('planner', []);
    await expect(clientFor().join('planner', token)).rejects.toMatchObject({ code: 'NAME_TAKEN', hint: expect.stringMatching(/--name/) });
    await expect(clientFor().join('newcomer')).rejects.toMatchObject({ code: 'BAD_TOKEN' });
    await expect(clientFor().list()).rejects.toMatchObject({ code: 'NOT_JOINED' });
    const { client } = await agent('solo', []);
    await expect(client.get('nobody')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const nowhere = clientFor(Identity.generate(), `http://127.0.0.1:${await closedPort()}`);
    await expect(nowhere.join('x', token)).rejects.toMatchObject({ code: 'REGISTRY_UNREACHABLE', hint: expect.stringMatching(/registry/) });
    expect(() => new RegistryClient({ url: 'not a url', identity: Identity.generate(), network: NET })).toThrow(/invalid registry URL/);
  });

  it('watches: snapshot first, upserts pushed promptly, a fresh snapshot after the registry restarts', async () => {
    const watcher = await agent('watcher', []);
    const snapshots: AgentView[][] = [];
    const changes: Array<{ kind: string; name: string }> = [];
    let connects = 0;
    let disconnects = 0;
    const w = watcher.client.watch({
      snapshot: (agents) => snapshots.push(agents),
      change: (kind, a) => changes.push({ kind, name: a.record.name }),
      connected: () => connects++,
      disconnected: () => disconnects++,
    });
    try {
      await until(() => snapshots.length === 1, 'the first snapshot');
      expect(snapshots[0].map((a) => a.record.name)).toEqual(['watcher']);

      const newcomer = await agent('newcomer', ['db.redis']);
      await until(() => changes.some((c) => c.kind === 'upsert' && c.name === 'newcomer'), 'the upsert');
      await newcomer.client.leave();
      await until(() => changes.some((c) => c.kind === 'offline' && c.name === 'newcomer'), 'the offline event');

      const port = reg.port;
      await reg.stop();
      await until(() => disconnects >= 1, 'the disconnect');
      reg = await start(`127.0.0.1:${port}`);
      await until(() => snapshots.length >= 2, 'the snapshot after reconnecting');
      expect(connects).toBeGreaterThanOrEqual(2);
      expect(snapshots.at(-1)!.map((a) => a.record.name).sort()).toEqual(['newcomer', 'watcher']);
    } finally {
      w.close();
    }
  });

  it('sees an agent go offline after the timeout and come back online on heartbeat', async () => {
    await reg.stop();
    reg = await start('127.0.0.1:0', 1000);
    token = await reg.createToken();
    const watcher = await agent('watcher', []);
    const sleeper = await agent('sleeper', []);
    const events: string[] = [];
    const w = watcher.client.watch({ snapshot: () => events.push('snapshot'), change: (kind, a) => a.record.name === 'sleeper' && events.push(kind) });
    try {
      await until(() => events.includes('offline'), 'sleeper going offline');
      await sleeper.client.heartbeat();
      await until(() => events.includes('online'), 'sleeper coming back online');
      expect((await watcher.client.get('sleeper')).online).toBe(true);
      expect(events[0]).toBe('snapshot');
    } finally {
      w.close();
    }
  });
});
