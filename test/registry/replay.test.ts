// Issue 7, class 9 (registry side): every signed request is usable once, also across a registry
// restart, and a join token that is used up or expired authorizes nothing.
import { describe, expect, it } from 'vitest';
import { request, type ClientRequest } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { Identity } from '../../src/identity/identity.js';
import { RegistryClient, type AgentView } from '../../src/registry/client.js';
import { proxiedRegistry } from './proxied-registry.js';

const NET = 'default';

describe('registry replays (issue 7, class 9)', () => {
  const f = proxiedRegistry('agentvpn-registry-replay-');

  const viewOf = async (name: string): Promise<AgentView> => {
    const r = await fetch(`${f.reg.url}/v1/agents/${name}?network=${NET}`, { headers: { authorization: `Bearer ${f.token}` } });
    return ((await r.json()) as { agent: AgentView }).agent;
  };

  it('refuses a replayed signed GET and a replayed event-stream request', async () => {
    const a = await f.agent('alpha');
    await a.client.list();
    await a.client.get('alpha');
    await new Promise<void>((resolve, reject) => {
      const w = a.client.watch({ snapshot: () => { w.close(); resolve(); }, change: () => {}, disconnected: (e) => { w.close(); reject(e); } });
    });
    const reads = [...f.proxy.find('GET', '/v1/agents'), ...f.proxy.find('GET', '/v1/events')];
    expect(reads.length).toBe(3);
    const answers = await Promise.all(reads.map((c) => f.proxy.replay(c)));
    console.log(`replayed signed reads: ${answers.filter((x) => x.status === 200).length} of ${answers.length} answered 200 (${answers.map((x) => x.status).join(', ')})`);
    for (const x of answers) expect(x.status).toBe(401);
    expect(answers.map((x) => x.body.code)).toEqual(['REPLAYED', 'REPLAYED', 'REPLAYED']);
  });

  it('refuses captured leave, heartbeat, join and GET replays after a restart on the same database', async () => {
    const a = await f.agent('alpha');
    await a.client.leave();
    await a.client.heartbeat();
    await a.client.list();
    expect((await viewOf('alpha')).online).toBe(true);

    await f.restart();
    const replays: Record<string, number> = {};
    let onlineAfterLeave = false;
    for (const [what, method, path] of [['leave', 'DELETE', '/v1/agents/'], ['join', 'POST', '/v1/join'], ['heartbeat', 'POST', '/v1/agents/'], ['GET', 'GET', '/v1/agents']]) {
      const captured = f.proxy.find(method, path).filter((c) => what !== 'heartbeat' || c.path.includes('/heartbeat'));
      expect(captured.length, what).toBeGreaterThan(0);
      replays[what] = (await f.proxy.replay(captured.at(-1)!)).status;
      if (what === 'leave') onlineAfterLeave = (await viewOf('alpha')).online;
    }
    console.log(`after a restart, replayed requests answered ${JSON.stringify(replays)}; agent online after the replayed leave: ${onlineAfterLeave}`);
    expect(onlineAfterLeave).toBe(true);
    for (const status of Object.values(replays)) expect(status).toBeGreaterThanOrEqual(400);
    // The agent itself carries on.
    await a.client.heartbeat();
    expect((await a.client.get('alpha')).online).toBe(true);
  });

  it('a used-up or expired join token authorizes no read and no stream, and streams it opened are closed', async () => {
    const once = await f.reg.createToken({ uses: 1 });
    const brief = await f.reg.createToken({ expiresInMs: 2000 });
    const read = async (tok: string) => (await fetch(`${f.reg.url}/v1/agents?network=${NET}`, { headers: { authorization: `Bearer ${tok}` } })).status;
    const openStream = (tok: string) => new Promise<{ status: number; req: ClientRequest; closed: Promise<void> }>((resolve) => {
      const req = request({ host: '127.0.0.1', port: f.reg.port, path: `/v1/events?network=${NET}`, headers: { authorization: `Bearer ${tok}` } }, (res) => {
        res.resume();
        resolve({ status: res.statusCode ?? 0, req, closed: new Promise((done) => res.on('close', () => done())) });
      });
      req.on('error', () => resolve({ status: 0, req, closed: Promise.resolve() }));
      req.end();
    });
    const bounded = (p: Promise<void>) => Promise.race([p.then(() => true), sleep(5000).then(() => false)]);

    expect(await read(once)).toBe(200);
    const onceStream = await openStream(once);
    const briefStream = await openStream(brief);
    expect([onceStream.status, briefStream.status]).toEqual([200, 200]);

    // The token's only use.
    const newcomer = new RegistryClient({ url: f.reg.url, identity: Identity.generate(), network: NET, timeoutMs: 5000 });
    f.clients.push(newcomer);
    await newcomer.join('newcomer', once);
    const usedUp = { read: await read(once), stream: (await openStream(once)).status, openStreamClosed: await bounded(onceStream.closed) };
    await sleep(2100);
    const expired = { read: await read(brief), stream: (await openStream(brief)).status, openStreamClosed: await bounded(briefStream.closed) };
    console.log(`used-up token: ${JSON.stringify(usedUp)}; expired token: ${JSON.stringify(expired)}`);
    onceStream.req.destroy();
    briefStream.req.destroy();
    expect(usedUp).toEqual({ read: 401, stream: 401, openStreamClosed: true });
    expect(expired).toEqual({ read: 401, stream: 401, openStreamClosed: true });
  });

  it('does not refuse honest concurrent signed requests of one agent', async () => {
    const a = await f.agent('alpha', f.reg.url);
    let snapshots = 0;
    const w = a.client.watch({ snapshot: () => snapshots++, change: () => {} });
    try {
      const results = await Promise.allSettled([
        ...Array.from({ length: 30 }, () => a.client.list()),
        ...Array.from({ length: 10 }, () => a.client.heartbeat()),
        ...Array.from({ length: 10 }, () => a.client.get('alpha')),
      ]);
      const refused = results.filter((r) => r.status === 'rejected');
      console.log(`concurrent signed requests: ${results.length - refused.length} of ${results.length} answered`);
      expect(refused.map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
      for (let i = 0; i < 100 && snapshots === 0; i++) await sleep(50);
      expect(snapshots).toBe(1);
    } finally {
      w.close();
    }
  });
});
