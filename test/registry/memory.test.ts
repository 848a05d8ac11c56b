// Issue 7, class 4: registry memory without bound. Records padded with unsigned fields, event
// streams that never read, JSON nested deep enough to overflow a recursive walk.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { Identity } from '../../src/identity/identity.js';
import { agentAuthorization, type AgentView } from '../../src/registry/protocol.js';
import { RegistryClient } from '../../src/registry/client.js';
import { signRecord, type AgentRecord } from '../../src/registry/record.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { httpGet, makeAgent, recordFor, stuckStream, type TestAgent } from './hostile-helpers.js';
import { createTokenCli, startRegistryProcess, type RegistryProcess } from './registry-process.js';

const NET = 'default';
const JUNK = 'x'.repeat(50_000);
const RECORD_KEYS = ['capabilities', 'endpoints', 'expiresAt', 'id', 'ipv4', 'ipv6', 'issuedAt', 'name', 'network', 'seq', 'v', 'wgPublicKey'];

describe('registry memory (issue 7, class 4)', () => {
  let dir: string;
  let reg: RunningRegistry | undefined;
  let proc: RegistryProcess | undefined;
  const agents: TestAgent[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-memory-'));
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) a.client.close();
    await reg?.stop();
    await proc?.stop();
    reg = proc = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses records padded with unsigned fields and never serves them (also ones stored before)', async () => {
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    const token = await reg.createToken();
    const honest = await makeAgent(reg.url, NET, 'honest', token);
    agents.push(honest);
    const put = (body: string) => fetch(`${reg!.url}/v1/agents/${honest.identity.id}`, { method: 'PUT', body });
    const signed = signRecord(honest.identity, recordFor(honest.identity, honest.join, 'honest', { seq: 2 }));
    const padded = [
      JSON.stringify({ ...signed, record: { ...signed.record, junk: JUNK } }),
      JSON.stringify({ ...signed, junk: JUNK }),
      JSON.stringify(signed).replace('"v":1', '"__proto__":{"x":1},"v":1'),
    ];
    const statuses: number[] = [];
    for (const body of padded) {
      const r = await put(body);
      statuses.push(r.status);
      if (r.status !== 200) expect(((await r.json()) as { code: string }).code).toBe('MALFORMED_RECORD');
    }
    const served = (await honest.client.get('honest')).record as unknown as Record<string, unknown>;
    const servedBytes = JSON.stringify(served).length;
    console.log(`padded records: answers ${statuses.join(', ')}; served record ${servedBytes} bytes`);
    expect(statuses).toEqual([400, 400, 400]);
    expect(Object.keys(served).sort()).toEqual(RECORD_KEYS);

    // A database written by an older registry may hold padded records: they are served canonical.
    await reg.stop();
    const db = new Database(join(dir, 'registry.db'));
    db.prepare('UPDATE records SET json = ?').run(JSON.stringify({ ...signed.record, seq: 1, junk: JUNK }));
    db.close();
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    honest.client.close();
    const again = (await makeAgent(reg.url, NET, 'reader', token));
    agents.push(again);
    const old = (await again.client.get('honest')).record as unknown as Record<string, unknown>;
    expect(Object.keys(old).sort()).toEqual(RECORD_KEYS);
  });

  it('200 event streams that never read: RSS growth stays bounded and streams past the per-credential cap are refused', async () => {
    const db = join(dir, 'registry.db');
    proc = await startRegistryProcess(db);
    const token = createTokenCli(db);
    // 200 agents, each trying to publish a record padded with 50 KB of unsigned junk (as the review did).
    let paddedAccepted = 0;
    for (let i = 0; i < 200; i++) {
      const identity = Identity.generate();
      const client = new RegistryClient({ url: proc.url, identity, network: NET, timeoutMs: 10_000 });
      const joined = await client.join(`a${i}`, token);
      const record = recordFor(identity, joined, `a${i}`);
      try {
        await client.publish(signRecord(identity, { ...record, junk: JUNK } as AgentRecord));
        paddedAccepted++;
      } catch {
        await client.publish(signRecord(identity, record));
      }
      agents.push({ identity, client, join: joined });
    }
    for (const a of agents) a.client.close();
    await sleep(500);
    const before = proc.rssMiB();
    const path = `/v1/events?network=${NET}`;

    // One credential (a join token) opening 200 streams; then 50 agents opening 4 each.
    const byToken = await Promise.all(Array.from({ length: 200 }, () => stuckStream(proc!.port, path, `Bearer ${token}`)));
    // Refused ones are done with (they would be closed as idle keep-alive connections anyway).
    for (const s of byToken) if (s.status !== 200) s.socket.destroy();
    let ts = Date.now();
    const byAgents = await Promise.all(agents.slice(0, 50).flatMap((a) => Array.from({ length: 4 }, () =>
      stuckStream(proc!.port, path, agentAuthorization(a.identity, 'GET', path, ++ts)))));
    await sleep(2000);
    const after = proc.rssMiB();
    const count = (list: Array<{ status: number }>, status: number) => list.filter((s) => s.status === status).length;
    const health = await httpGet(proc.port, '/healthz', { localAddress: '127.0.0.2' });
    console.log(`padded records accepted: ${paddedAccepted}/200; token streams: ${count(byToken, 200)} open, ${count(byToken, 429)} refused; ` +
      `agent streams: ${count(byAgents, 200)} open; registry RSS ${before.toFixed(0)} -> ${after.toFixed(0)} MB (+${(after - before).toFixed(0)} MB)`);
    for (const s of [...byToken, ...byAgents]) s.socket.destroy();

    expect(paddedAccepted).toBe(0);
    expect(count(byToken, 200)).toBeLessThanOrEqual(4);
    expect(count(byToken, 429)).toBeGreaterThanOrEqual(196);
    expect(count(byAgents, 200)).toBe(200);
    expect(after - before).toBeLessThan(150);
    expect(health.status).toBe(200);
  });

  it('a snapshot larger than the socket buffers: 52 streams that never read hold little each, a reading one gets it all', async () => {
    const db = join(dir, 'registry.db');
    proc = await startRegistryProcess(db);
    const token = createTokenCli(db);
    // 2,000 agents with records of the largest allowed size (~3.3 KB): a ~6.6 MB snapshot, more than the socket buffers hold.
    const caps = Array.from({ length: 32 }, (_, j) => `svc.c${String(j).padStart(2, '0')};model=${'m'.repeat(50)}`);
    const endpoints = Array.from({ length: 16 }, (_, j) => `[fd00:1:2:3:4:5:6:${j + 1}]:51820`);
    const fleet: TestAgent[] = [];
    let next = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (next < 2000) {
        const i = next++;
        const a = await makeAgent(proc!.url, NET, `big${i}`, token, { capabilities: caps, endpoints });
        a.client.close();
        fleet.push(a);
      }
    }));
    await sleep(500);
    const before = proc.rssMiB();
    const path = `/v1/events?network=${NET}`;
    let ts = Date.now();
    const stuck = await Promise.all(fleet.slice(0, 13).flatMap((a) => Array.from({ length: 4 }, () =>
      stuckStream(proc!.port, path, agentAuthorization(a.identity, 'GET', path, ++ts)))));
    // Meanwhile an honest subscriber reads the whole snapshot.
    const reader = fleet[100];
    const got = await new Promise<number>((resolve, reject) => {
      const client = new RegistryClient({ url: proc!.url, identity: reader.identity, network: NET, timeoutMs: 10_000 });
      const w = client.watch({ snapshot: (list) => { w.close(); client.close(); resolve(list.length); }, change: () => {}, disconnected: (e) => { w.close(); reject(e); } });
    });
    await sleep(2000);
    const after = proc.rssMiB();
    console.log(`snapshot of ${got} agents (~${((got * 3300) / 1e6).toFixed(0)} MB) to a reader; ${stuck.filter((s) => s.status === 200).length} stuck streams; ` +
      `registry RSS ${before.toFixed(0)} -> ${after.toFixed(0)} MB (+${(after - before).toFixed(0)} MB)`);
    for (const s of stuck) s.socket.destroy();
    expect(got).toBe(2000);
    expect(stuck.filter((s) => s.status === 200).length).toBe(52);
    expect(after - before).toBeLessThan(100);
  });

  it('refuses JSON nested past the depth limit with 400 before walking it (no 500, no stack overflow)', async () => {
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    const token = await reg.createToken();
    // A member: strangers are refused before their bodies are parsed at all.
    const member = await makeAgent(reg.url, NET, 'deep', token);
    agents.push(member);
    const id = member.identity.id;
    const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);
    const record = JSON.stringify(recordFor(member.identity, member.join, 'deep', { seq: 2 })).replace('["svc.test"]', deep(30_000));
    const bodies: Array<[string, string, string]> = [
      ['PUT', `/v1/agents/${id}`, `{"record":${record},"signature":"x"}`],
      ['POST', '/v1/join', `{"network":"default","id":${deep(30_000)}}`],
      ['POST', `/v1/agents/${id}/heartbeat`, `{"timestamp":${deep(30_000)}}`],
      ['PUT', `/v1/agents/${id}`, `{"record":{"a":"[[[[[[[[[[\\"]]]"},"signature":"x"}`], // brackets inside strings do not count
    ];
    const statuses: number[] = [];
    for (const [method, path, body] of bodies) statuses.push((await fetch(reg.url + path, { method, body })).status);
    console.log(`nested JSON answers: ${statuses.join(', ')}; internal errors: ${reg.stats().refused.INTERNAL ?? 0}`);
    expect(statuses).toEqual([400, 400, 400, 400]);
    expect(reg.stats().refused.INTERNAL).toBeUndefined();
    expect((await member.client.list()).map((a: AgentView) => a.record.name)).toEqual(['deep']);
  });
});
