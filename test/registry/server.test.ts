import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Identity } from '../../src/identity/identity.js';
import { overlayIPv6 } from '../../src/identity/addresses.js';
import { formatAddress } from '../../src/ip/prefix.js';
import { signRecord, type AgentRecord, type SignedRecord } from '../../src/registry/record.js';
import {
  HEARTBEAT_LABEL, LEAVE_LABEL, agentAuthorization, signJoin, signTimestamp, type AgentView, type JoinResult,
} from '../../src/registry/protocol.js';
import { startRegistry, type RegistryOptions, type RunningRegistry } from '../../src/registry/server.js';

const NET = 'default';

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

/** One raw HTTP request, so the tests see exactly what the server sends. */
async function call(reg: RunningRegistry, method: string, path: string, opts: { body?: unknown; raw?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const res = await fetch(reg.url + path, {
    method,
    headers: { 'content-type': 'application/json', ...opts.headers },
    body: opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body)),
  });
  const text = await res.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text);
  } catch {
    body = { text };
  }
  return { status: res.status, body };
}

function recordFor(id: Identity, ipv4: string, over: Partial<AgentRecord> = {}): AgentRecord {
  const now = Date.now();
  return {
    v: 1, network: NET, id: id.id, name: 'planner', wgPublicKey: Buffer.from(id.wgPublicKey).toString('base64'),
    ipv4, ipv6: formatAddress(overlayIPv6(NET, id.publicKey)), endpoints: ['192.0.2.1:51820'],
    capabilities: ['llm.plan'], seq: 1, issuedAt: now, expiresAt: now + 3_600_000, ...over,
  };
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const signedBy = (id: Identity, method: string, path: string, ts: number) => ({ authorization: agentAuthorization(id, method, path, ts) });

describe('registry server', () => {
  let dir: string;
  let reg: RunningRegistry;
  let token: string;
  let ts = Date.now();
  /** Signed timestamps must grow per agent; tests sign many within one millisecond. */
  const stamp = () => (ts = Math.max(Date.now(), ts + 1));

  async function start(over: Partial<RegistryOptions> = {}): Promise<RunningRegistry> {
    reg = await startRegistry({ db: join(dir, 'registry.db'), ...over });
    return reg;
  }

  /** Joins with the test's token, another one, or none (null). */
  async function joinAs(id: Identity, name: string, tok: string | null = token): Promise<Answer> {
    return call(reg, 'POST', '/v1/join', { body: signJoin(id, NET, name, stamp(), tok ?? undefined) });
  }

  async function joinAndPublish(id: Identity, name: string, over: Partial<AgentRecord> = {}): Promise<JoinResult> {
    const j = await joinAs(id, name);
    expect(j.status, JSON.stringify(j.body)).toBe(200);
    const put = await call(reg, 'PUT', `/v1/agents/${id.id}`, { body: signRecord(id, recordFor(id, j.body.ipv4 as string, { name, ...over })) });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    return j.body as unknown as JoinResult;
  }

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-'));
    await start();
    token = await reg.createToken();
  });

  afterEach(async () => {
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('joins, publishes, lists by capability (exact match) and gets by name and ID', async () => {
    const planner = Identity.generate();
    const worker = Identity.generate();
    const j = await joinAndPublish(planner, 'planner', { capabilities: ['llm.plan'] });
    expect(j).toMatchObject({ network: NET, ipv4: '100.64.0.1', pool: '100.64.0.0/10', ipv6: formatAddress(overlayIPv6(NET, planner.publicKey)) });
    expect(j.ulaPrefix).toMatch(/^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::\/48$/);
    expect(j.heartbeatIntervalMs).toBeLessThan(j.offlineAfterMs);
    await joinAndPublish(worker, 'worker', { capabilities: ['llm.inference@1;model=llama3'] });

    const list = async (q: string) => ((await call(reg, 'GET', `/v1/agents?${q}`, { headers: bearer(token) })).body.agents as AgentView[]).map((a) => a.record.name).sort();
    expect(await list('network=default')).toEqual(['planner', 'worker']);
    expect(await list('cap=llm.inference')).toEqual(['worker']);
    expect(await list(`cap=${encodeURIComponent('llm.inference;model=llama3')}`)).toEqual(['worker']);
    expect(await list(`cap=${encodeURIComponent('llm.inference;model=llama')}`)).toEqual([]);
    expect(await list('cap=llm')).toEqual([]);
    expect(await list('cap=llm.pla')).toEqual([]);
    expect(await list('cap=llm.plan&online=1')).toEqual(['planner']);
    expect(await list('name=worker')).toEqual(['worker']);

    const byName = await call(reg, 'GET', '/v1/agents/worker?network=default', { headers: signedBy(planner, 'GET', '/v1/agents/worker?network=default', stamp()) });
    expect(byName.status).toBe(200);
    const view = byName.body.agent as AgentView;
    expect(view.record.id).toBe(worker.id);
    expect(view.online).toBe(true);
    expect(typeof view.signature).toBe('string');
    const byId = await call(reg, 'GET', `/v1/agents/${planner.id}`, { headers: bearer(token) });
    expect((byId.body.agent as AgentView).record.name).toBe('planner');
    expect((await call(reg, 'GET', '/healthz')).body).toEqual({ ok: true });
  });

  it('a token seen valid lately spares the store lookup before the signature check; one that ran out meanwhile is still refused', async () => {
    await reg.stop();
    const { SqliteStore } = await import('../../src/registry/sqlite-store.js');
    const store = new SqliteStore(join(dir, 'counted.db'));
    let lookups = 0;
    const checkToken = store.checkToken.bind(store);
    store.checkToken = (...a) => (lookups++, checkToken(...a));
    await start({ store });
    const brief = await reg.createToken({ expiresInMs: 400 });
    expect((await joinAs(Identity.generate(), 'first', brief)).status).toBe(200);
    expect((await joinAs(Identity.generate(), 'second', brief)).status).toBe(200);
    console.log(`token lookups before the signature check for two joins: ${lookups}`);
    expect(lookups).toBe(1);
    await sleep(500);
    // Still in the filter, but the store's admit refuses the expired token and the filter forgets it.
    expect(await joinAs(Identity.generate(), 'late', brief)).toMatchObject({ status: 403, body: { code: 'BAD_TOKEN' } });
    expect(lookups).toBe(1);
    expect(await joinAs(Identity.generate(), 'later', brief)).toMatchObject({ status: 403, body: { code: 'BAD_TOKEN' } });
    expect(lookups).toBe(2); // looked up again, and refused before any signature check
  });

  it('allocates sticky IPv4 addresses: re-join keeps it, another agent gets another, a full pool refuses', async () => {
    await reg.stop();
    await start({ pool: '100.64.0.0/30' });
    const a = Identity.generate();
    const b = Identity.generate();
    const first = await joinAs(a, 'a');
    expect(first.body.ipv4).toBe('100.64.0.1');
    expect((await joinAs(a, 'a', null)).body.ipv4).toBe('100.64.0.1');
    expect((await joinAs(b, 'b')).body.ipv4).toBe('100.64.0.2');
    expect((await joinAs(a, 'a-renamed', null)).body.ipv4).toBe('100.64.0.1');
    const full = await joinAs(Identity.generate(), 'c');
    expect(full).toMatchObject({ status: 503, body: { ok: false, code: 'POOL_EXHAUSTED' } });
  });

  it('keeps tokens, members, addresses and records across a restart on the same database', async () => {
    const a = Identity.generate();
    await joinAndPublish(a, 'alpha', { capabilities: ['db.postgres@16'] });
    await reg.stop();
    expect(statSync(join(dir, 'registry.db')).mode & 0o777).toBe(0o600);
    await start();
    // The token survived (a new agent joins with it) and the old agent re-joins without one.
    const b = Identity.generate();
    expect((await joinAs(b, 'beta')).body.ipv4).toBe('100.64.0.2');
    expect((await joinAs(a, 'alpha', null)).body.ipv4).toBe('100.64.0.1');
    const got = await call(reg, 'GET', '/v1/agents/alpha', { headers: bearer(token) });
    expect((got.body.agent as AgentView).record.capabilities).toEqual(['db.postgres@16']);
    // The stored seq survived too: replaying the same record is stale.
    const stale = await call(reg, 'PUT', `/v1/agents/${a.id}`, { body: signRecord(a, recordFor(a, '100.64.0.1', { name: 'alpha', capabilities: ['db.postgres@16'] })) });
    expect(stale.body.code).toBe('STALE_RECORD');
  });

  it('marks an agent offline after the timeout, online again on heartbeat, offline at once on leave', async () => {
    await reg.stop();
    await start({ offlineAfterMs: 1000 });
    const a = Identity.generate();
    await joinAndPublish(a, 'alpha');
    const online = async () => ((await call(reg, 'GET', '/v1/agents/alpha', { headers: bearer(token) })).body.agent as AgentView).online;
    expect(await online()).toBe(true);
    for (let i = 0; i < 50 && (await online()); i++) await sleep(100);
    expect(await online()).toBe(false);
    const hb = await call(reg, 'POST', `/v1/agents/${a.id}/heartbeat`, { body: signTimestamp(a, HEARTBEAT_LABEL, NET, stamp()) });
    expect(hb.status, JSON.stringify(hb.body)).toBe(200);
    expect(await online()).toBe(true);
    const leave = await call(reg, 'DELETE', `/v1/agents/${a.id}`, { body: signTimestamp(a, LEAVE_LABEL, NET, stamp()) });
    expect(leave.status).toBe(200);
    expect(await online()).toBe(false);
    expect(reg.stats()).toMatchObject({ agents: 1, online: 0 });
  });

  it('refuses every kind of bad request with the right code, counts it, and keeps serving', async () => {
    const owner = Identity.generate();
    const thief = Identity.generate();
    const j = await joinAndPublish(owner, 'owner');
    const expectRefused = async (a: Answer | Promise<Answer>, status: number, code: string) => {
      const got = await a;
      expect(got.status, JSON.stringify(got.body)).toBe(status);
      expect(got.body).toMatchObject({ ok: false, code });
      expect(typeof got.body.message).toBe('string');
      expect(typeof got.body.hint).toBe('string');
    };
    const put = (id: Identity, signed: SignedRecord) => call(reg, 'PUT', `/v1/agents/${id.id}`, { body: signed });

    // Joining: tokens, signatures, clocks, names.
    await expectRefused(joinAs(thief, 'thief', null), 403, 'BAD_TOKEN');
    await expectRefused(joinAs(thief, 'thief', 'avt_wrong'), 403, 'BAD_TOKEN');
    const expired = await reg.createToken({ expiresInMs: -1 });
    await expectRefused(joinAs(thief, 'thief', expired), 403, 'BAD_TOKEN');
    const once = await reg.createToken({ uses: 1 });
    expect((await joinAs(Identity.generate(), 'one-use', once)).status).toBe(200);
    await expectRefused(joinAs(Identity.generate(), 'two-use', once), 403, 'BAD_TOKEN');
    const forged = { ...signJoin(thief, NET, 'thief', stamp(), token), signature: signJoin(owner, NET, 'thief', stamp()).signature };
    await expectRefused(call(reg, 'POST', '/v1/join', { body: forged }), 403, 'BAD_SIGNATURE');
    await expectRefused(call(reg, 'POST', '/v1/join', { body: signJoin(thief, NET, 'thief', Date.now() - 10 * 60_000, token) }), 400, 'CLOCK_SKEW');
    const replay = signJoin(owner, NET, 'owner', stamp());
    expect((await call(reg, 'POST', '/v1/join', { body: replay })).status).toBe(200);
    await expectRefused(call(reg, 'POST', '/v1/join', { body: replay }), 401, 'REPLAYED');
    await expectRefused(joinAs(thief, 'owner'), 409, 'NAME_TAKEN');

    // Records: signatures, keys, names, addresses, seq.
    const good = recordFor(owner, j.ipv4, { name: 'owner', seq: 2 });
    await expectRefused(put(owner, { ...signRecord(owner, good), record: { ...good, capabilities: ['evil'] } }), 403, 'BAD_SIGNATURE');
    await expectRefused(put(owner, signRecord(thief, good)), 403, 'BAD_SIGNATURE');
    await expectRefused(put(owner, signRecord(owner, { ...good, wgPublicKey: Buffer.from(thief.wgPublicKey).toString('base64') })), 403, 'KEY_MISMATCH');
    await expectRefused(put(owner, signRecord(owner, { ...good, ipv6: formatAddress(overlayIPv6(NET, thief.publicKey)) })), 403, 'KEY_MISMATCH');
    await expectRefused(put(owner, signRecord(owner, { ...good, expiresAt: Date.now() - 1 })), 400, 'EXPIRED_RECORD');
    await expectRefused(put(owner, signRecord(owner, { ...good, name: 'Not A Name' })), 400, 'MALFORMED_RECORD');
    await expectRefused(call(reg, 'PUT', `/v1/agents/${owner.id}?network=other`, { body: signRecord(owner, good) }), 403, 'NOT_JOINED');
    const elsewhere = { ...good, network: 'other', ipv6: formatAddress(overlayIPv6('other', owner.publicKey)) };
    await expectRefused(put(owner, signRecord(owner, elsewhere)), 400, 'WRONG_NETWORK');
    await expectRefused(put(owner, signRecord(owner, { ...good, ipv4: '100.64.9.9' })), 409, 'ADDRESS_MISMATCH');
    await expectRefused(put(owner, signRecord(owner, { ...good, seq: 1 })), 409, 'STALE_RECORD');
    // The thief may not publish under a taken name, nor before joining.
    await expectRefused(put(thief, signRecord(thief, recordFor(thief, '100.64.0.9', { name: 'owner' }))), 403, 'NOT_JOINED');
    const t = await joinAs(thief, 'thief');
    await expectRefused(put(thief, signRecord(thief, recordFor(thief, t.body.ipv4 as string, { name: 'owner' }))), 409, 'NAME_TAKEN');
    await expectRefused(call(reg, 'PUT', `/v1/agents/${thief.id}`, { body: signRecord(owner, good) }), 400, 'BAD_REQUEST');

    // Heartbeats and leaves are the agent's own.
    await expectRefused(call(reg, 'POST', `/v1/agents/${owner.id}/heartbeat`, { body: signTimestamp(thief, HEARTBEAT_LABEL, NET, stamp()) }), 403, 'BAD_SIGNATURE');
    await expectRefused(call(reg, 'DELETE', `/v1/agents/${owner.id}`, { body: signTimestamp(owner, HEARTBEAT_LABEL, NET, stamp()) }), 403, 'BAD_SIGNATURE');
    await expectRefused(call(reg, 'POST', `/v1/agents/${thief.id}/heartbeat`, { body: signTimestamp(thief, HEARTBEAT_LABEL, NET, stamp()) }), 404, 'NOT_FOUND');

    // Reads need a joined agent's signature or a token of the network.
    await expectRefused(call(reg, 'GET', '/v1/agents'), 401, 'UNAUTHORIZED');
    await expectRefused(call(reg, 'GET', '/v1/agents', { headers: bearer('avt_nope') }), 401, 'UNAUTHORIZED');
    await expectRefused(call(reg, 'GET', '/v1/agents', { headers: signedBy(owner, 'GET', '/v1/agents?network=x', stamp()) }), 401, 'UNAUTHORIZED');
    await expectRefused(call(reg, 'GET', '/v1/agents', { headers: signedBy(Identity.generate(), 'GET', '/v1/agents', stamp()) }), 403, 'NOT_JOINED');
    await expectRefused(call(reg, 'GET', '/v1/agents', { headers: signedBy(owner, 'GET', '/v1/agents', Date.now() + 3_600_000) }), 400, 'CLOCK_SKEW');
    await expectRefused(call(reg, 'GET', '/v1/agents?cap=BAD', { headers: bearer(token) }), 400, 'BAD_REQUEST');
    await expectRefused(call(reg, 'GET', '/v1/agents/nobody', { headers: bearer(token) }), 404, 'NOT_FOUND');

    // Malformed, oversized, garbage.
    await expectRefused(call(reg, 'POST', '/v1/join', { raw: '{"network":' }), 400, 'BAD_REQUEST');
    await expectRefused(call(reg, 'POST', '/v1/join', { raw: '[1,2]' }), 400, 'BAD_REQUEST');
    await expectRefused(call(reg, 'POST', '/v1/join', { body: { network: 'default', id: 'x', name: 'n', timestamp: 1, signature: 'x' } }), 400, 'BAD_REQUEST');
    await expectRefused(call(reg, 'POST', '/v1/join', { raw: JSON.stringify({ pad: 'x'.repeat(100 * 1024) }) }), 413, 'PAYLOAD_TOO_LARGE');
    await expectRefused(call(reg, 'GET', '/v1/nothing'), 404, 'NOT_FOUND');
    await expectRefused(call(reg, 'GET', '/%E0%A4%A'), 400, 'BAD_REQUEST');
    await expectRefused(call(reg, 'PATCH', '/v1/join'), 405, 'METHOD_NOT_ALLOWED');
    await expectRefused(call(reg, 'POST', '/v1/agents'), 405, 'METHOD_NOT_ALLOWED');

    const stats = await call(reg, 'GET', '/v1/stats', { headers: bearer(token) });
    expect(stats.status).toBe(200);
    const refused = stats.body.refused as Record<string, number>;
    for (const code of ['BAD_TOKEN', 'BAD_SIGNATURE', 'CLOCK_SKEW', 'REPLAYED', 'NAME_TAKEN', 'KEY_MISMATCH', 'EXPIRED_RECORD', 'MALFORMED_RECORD', 'WRONG_NETWORK',
      'ADDRESS_MISMATCH', 'STALE_RECORD', 'NOT_JOINED', 'UNAUTHORIZED', 'BAD_REQUEST', 'PAYLOAD_TOO_LARGE', 'NOT_FOUND', 'METHOD_NOT_ALLOWED']) {
      expect(refused[code], code).toBeGreaterThan(0);
    }
    expect(refused.BAD_TOKEN).toBe(4);
    expect(refused.INTERNAL).toBeUndefined();
    // Still serving, and the owner's record is the good one.
    const owned = await call(reg, 'GET', '/v1/agents/owner', { headers: bearer(token) });
    expect((owned.body.agent as AgentView).record.id).toBe(owner.id);
    expect((await put(owner, signRecord(owner, good))).status).toBe(200);
  });

  it('survives fuzzed bodies, headers and raw bytes', async () => {
    const owner = Identity.generate();
    await joinAndPublish(owner, 'owner');
    const values: unknown[] = [null, 0, -1, 1e308, 'x', '', [], {}, true, { record: null }, 'a'.repeat(5000), [{ a: 1 }], Number.MAX_SAFE_INTEGER + 2];
    const keys = ['network', 'id', 'name', 'timestamp', 'signature', 'token', 'record', 'v', 'seq'];
    let seed = 42;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    for (let i = 0; i < 150; i++) {
      const body: Record<string, unknown> = {};
      for (let k = 0; k < 4; k++) body[keys[rand(keys.length)]] = values[rand(values.length)];
      const paths = ['/v1/join', `/v1/agents/${owner.id}`, `/v1/agents/${owner.id}/heartbeat`, '/v1/agents/x/heartbeat', '/v1/agents//', '/v1/../etc'];
      const method = ['POST', 'PUT', 'DELETE', 'GET'][rand(4)];
      const path = paths[rand(paths.length)];
      const headers = rand(3) === 0 ? { authorization: ['Bearer', 'AgentVPN a b c', `AgentVPN ${owner.id} 1 x`, 'Basic zz'][rand(4)] } : undefined;
      const got = await call(reg, method, path, { raw: method === 'GET' ? undefined : JSON.stringify(body), headers });
      expect(got.status, `${method} ${path} ${JSON.stringify(body).slice(0, 200)}`).toBeGreaterThanOrEqual(400);
      expect(got.status).toBeLessThan(500);
    }
    // Raw bytes that are not HTTP at all.
    await new Promise<void>((resolve) => {
      const s = connect(reg.port, '127.0.0.1', () => s.end(Buffer.from([0, 1, 2, 255, 13, 10, 13, 10])));
      s.on('close', () => resolve());
      s.on('error', () => resolve());
      s.resume();
    });
    // A client that declares a huge body and goes away.
    await new Promise<void>((resolve) => {
      const r = httpRequest({ host: '127.0.0.1', port: reg.port, method: 'POST', path: '/v1/join', headers: { 'content-length': '10000000' } }, (res) => {
        res.resume();
        res.on('end', resolve);
      });
      r.on('error', () => resolve());
      r.write('{"a":');
      setTimeout(() => r.destroy(), 50);
    });
    // A chunked body (no content-length) that grows past the limit.
    const chunked = await new Promise<number>((resolve, reject) => {
      const r = httpRequest({ host: '127.0.0.1', port: reg.port, method: 'PUT', path: `/v1/agents/${owner.id}`, headers: { 'transfer-encoding': 'chunked' } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      r.on('error', reject);
      for (let i = 0; i < 20; i++) r.write(Buffer.alloc(8192, 0x20));
      r.end();
    });
    expect(chunked).toBe(413);
    expect(reg.stats().refused.INTERNAL).toBeUndefined();
    const ok = await call(reg, 'GET', '/v1/agents?online=1', { headers: bearer(token) });
    expect((ok.body.agents as AgentView[]).map((a) => a.record.name)).toEqual(['owner']);
  });

  it('serves HTTPS when given a certificate and key', async () => {
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    try {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
        '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    } catch {
      if (process.env.CI) throw new Error('openssl is needed to make a test certificate');
      return;
    }
    await reg.stop();
    await start({ tlsCert: cert, tlsKey: key });
    expect(reg.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const { RegistryClient } = await import('../../src/registry/client.js');
    const a = Identity.generate();
    const client = new RegistryClient({ url: reg.url, identity: a, network: NET, caFile: cert });
    expect((await client.join('secure', token)).ipv4).toBe('100.64.0.1');
    const snapshot = await new Promise<AgentView[]>((resolve, reject) => {
      const w = client.watch({ snapshot: (agents) => { w.close(); resolve(agents); }, change: () => {}, disconnected: (e) => { w.close(); reject(e); } });
    });
    expect(snapshot).toEqual([]);
    const untrusting = new RegistryClient({ url: reg.url, identity: a, network: NET });
    await expect(untrusting.join('secure')).rejects.toMatchObject({ code: 'REGISTRY_TLS' });
    client.close();
    untrusting.close();
  });
});
