// Read sessions (src/registry/read-sessions.ts): a member's reads carry an HMAC under a secret it
// got with one signed request. What they must not give away: a replayed or forged read, a read
// for another network, a session that outlives the member's removal, a session opened by a
// session, unbounded sessions; and what they must keep: a client that meets a restarted registry
// opens a new session by itself.
import type { IncomingMessage } from 'node:http';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { Identity } from '../../src/identity/identity.js';
import { AdminClient } from '../../src/registry/admin-client.js';
import { Fleet } from '../../src/registry/fleet-state.js';
import { requestMessage } from '../../src/registry/protocol.js';
import { ReadSessions, sessionAuthorization, sessionMac } from '../../src/registry/read-sessions.js';
import { authorizeRead } from '../../src/registry/request-auth.js';
import { SignatureBudget } from '../../src/registry/signature-budget.js';
import type { RegistryStore } from '../../src/registry/store.js';
import { proxiedRegistry } from './proxied-registry.js';

const NET = 'default';

describe('read sessions: bounds', () => {
  it('a member holds at most 4 (the oldest goes), all at most the cap (the soonest to expire goes), each lives its lifetime', () => {
    const s = new ReadSessions({ perAgent: 4, total: 10, lifetimeMs: 1_000 });
    const mac = (x: { secret: Buffer }, ts: number) => sessionMac(x.secret, 'GET', '/v1/agents', ts);
    const key = Buffer.alloc(32, 7);
    const first = s.open('a', NET, key, 0);
    const more = [1, 2, 3, 4].map((t) => s.open('a', NET, key, t));
    expect(s.size).toBe(4);
    expect(s.check(first.id, NET, 'GET', '/v1/agents', 5, mac(first, 5), 5)).toMatchObject({ ok: false, code: 'SESSION_UNKNOWN' });
    expect(s.check(more[3].id, NET, 'GET', '/v1/agents', 5, mac(more[3], 5), 5)).toEqual({ ok: true, agent: 'a', key });
    for (let i = 0; i < 20; i++) s.open(`b${i}`, NET, key, 10 + i);
    expect(s.size).toBe(10);
    expect(s.check(more[3].id, NET, 'GET', '/v1/agents', 6, mac(more[3], 6), 6)).toMatchObject({ ok: false, code: 'SESSION_UNKNOWN' });
    const late = s.open('c', NET, key, 100);
    expect(s.check(late.id, NET, 'GET', '/v1/agents', 1_099, mac(late, 1_099), 1_099)).toMatchObject({ ok: true });
    expect(s.check(late.id, NET, 'GET', '/v1/agents', 1_100, mac(late, 1_100), 1_100)).toMatchObject({ ok: false, code: 'SESSION_UNKNOWN' });
  });
});

describe('read sessions: the agent rotates its key', () => {
  it('a session opened under the old key is refused once the agent rotated (a thief of the old key keeps no reads)', async () => {
    const identity = Identity.generate();
    const fleet = new Fleet();
    fleet.net(NET).setMember({ id: identity.id, network: NET, name: 'a', ipv4: '100.64.0.1', joinedAt: 0, tags: [] });
    const sessions = new ReadSessions();
    const authority = { store: {} as RegistryStore, fleet, signatures: new SignatureBudget(), sessions };
    const opened = sessions.open(identity.id, NET, identity.publicKey, Date.now());
    const read = (ts: number) => authorizeRead({ method: 'GET', url: '/v1/agents', headers: { authorization: sessionAuthorization(opened, 'GET', '/v1/agents', ts) }, socket: { remoteAddress: '127.0.0.1' } } as unknown as IncomingMessage, NET, Date.now(), authority);
    await expect(read(Date.now())).resolves.toMatchObject({ key: `agent:${identity.id}` });
    fleet.setRotated(identity.id, Buffer.alloc(32, 9), []);
    await expect(read(Date.now() + 1)).rejects.toMatchObject({ code: 'SESSION_UNKNOWN' });
  });
});

describe('read sessions against a registry', () => {
  const f = proxiedRegistry('agentvpn-read-sessions-');

  const raw = async (path: string, authorization: string, method = 'GET') => {
    const r = await fetch(`${f.reg.url}${path}`, { method, headers: { authorization } });
    return { status: r.status, body: (await r.json()) as Record<string, unknown> };
  };

  it('one signed request opens the session, then reads carry a MAC; replayed, forged, other-network and session-opened-by-session requests are refused', async () => {
    const a = await f.agent('alpha');
    for (let i = 0; i < 5; i++) await a.client.get('alpha');
    await a.client.list();
    const kinds = f.proxy.captured.filter((c) => c.method !== 'PUT' && !c.path.startsWith('/v1/join')).map((c) => `${c.method} ${c.path.split('?')[0]} ${String(c.headers.authorization).split(' ')[0]}`);
    console.log(`requests: ${kinds.join('; ')}`);
    expect(kinds[0]).toBe('POST /v1/sessions AgentVPN');
    expect(kinds.slice(1).every((k) => k.endsWith('AgentVPN-Session'))).toBe(true);
    expect(f.proxy.find('POST', '/v1/sessions')).toHaveLength(1);

    const read = f.proxy.find('GET', '/v1/agents/alpha')[0];
    const replayed = await f.proxy.replay(read);
    expect([replayed.status, replayed.body.code]).toEqual([401, 'REPLAYED']);

    const [, id, ts, mac] = String(read.headers.authorization).split(' ');
    const forged = `AgentVPN-Session ${id} ${Number(ts) + 1} ${mac}`;
    expect((await raw('/v1/agents/alpha?network=default', forged)).body.code).toBe('UNAUTHORIZED');
    const unknown = sessionAuthorization({ id: 'A'.repeat(22), secret: Buffer.alloc(32) }, 'GET', '/v1/agents/alpha?network=default', Date.now());
    expect((await raw('/v1/agents/alpha?network=default', unknown)).body.code).toBe('SESSION_UNKNOWN');

    // The secret, as the member holds it: valid for its network, not for another, and it cannot open a session.
    const opened = await raw('/v1/sessions?network=default', signedAuthorization(a.identity, 'POST', '/v1/sessions?network=default'), 'POST');
    expect(opened.status).toBe(200);
    const session = { id: String(opened.body.session), secret: Buffer.from(String(opened.body.secret), 'base64') };
    const ok = await raw('/v1/agents/alpha?network=default', sessionAuthorization(session, 'GET', '/v1/agents/alpha?network=default', Date.now() + 1));
    expect(ok.status).toBe(200);
    const other = await raw('/v1/agents/alpha?network=other', sessionAuthorization(session, 'GET', '/v1/agents/alpha?network=other', Date.now() + 2));
    expect(other.body.code).toBe('UNAUTHORIZED');
    const chained = await raw('/v1/sessions?network=default', sessionAuthorization(session, 'POST', '/v1/sessions?network=default', Date.now() + 3), 'POST');
    expect([chained.status, chained.body.code]).toEqual([401, 'UNAUTHORIZED']);
  });

  it('a removed member is refused at once on its open session; a client meeting a restarted registry opens a new session by itself', async () => {
    const a = await f.agent('alpha');
    const b = await f.agent('bravo');
    await a.client.get('bravo');
    await b.client.get('alpha');
    await new AdminClient(f.reg.url, await f.reg.createAdminToken(), NET).remove('bravo', false);
    await expect(b.client.get('alpha')).rejects.toMatchObject({ code: 'NOT_JOINED' });

    await f.restart();
    const before = f.proxy.find('POST', '/v1/sessions').length;
    expect((await a.client.get('alpha')).record.name).toBe('alpha');
    const last = f.proxy.captured.slice(-3).map((c) => `${c.method} ${c.path.split('?')[0]} ${String(c.headers.authorization).split(' ')[0]}`);
    console.log(`after the restart: ${last.join('; ')} (the first refused SESSION_UNKNOWN)`);
    expect(last).toEqual(['GET /v1/agents/alpha AgentVPN-Session', 'POST /v1/sessions AgentVPN', 'GET /v1/agents/alpha AgentVPN-Session']);
    expect(f.proxy.find('POST', '/v1/sessions').length).toBe(before + 1);
  });

  it('a read under a session takes no timestamp in the database (a signed read does); its cost beside a signed one, in process', async () => {
    const a = await f.agent('alpha');
    const path = '/v1/agents/alpha?network=default';
    const opened = await raw('/v1/sessions?network=default', signedAuthorization(a.identity, 'POST', '/v1/sessions?network=default'), 'POST');
    const session = { id: String(opened.body.session), secret: Buffer.from(String(opened.body.secret), 'base64') };
    const get = (authorization: string) => fetch(`${f.reg.url}${path}`, { headers: { authorization } }).then((r) => r.json());
    const db = new Database(f.db, { readonly: true });
    const window = () => (db.prepare('SELECT floor, used FROM replay_windows WHERE id = ?').get(a.identity.id) as { floor: number; used: string });
    const time = async (read: () => Promise<unknown>) => {
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      for (let i = 0; i < 500; i++) await read();
      const c = process.cpuUsage(c0);
      return { ms: (performance.now() - t0) / 500, cpuUs: (c.user + c.system) / 500 };
    };
    try {
      const before = window();
      const viaSession = await time(() => get(sessionAuthorization(session, 'GET', path, ++lastStamp)));
      const afterSession = window();
      const viaSignature = await time(() => get(signedAuthorization(a.identity, 'GET', path)));
      console.log(`a lookup, client and registry in one process: under a session ${viaSession.ms.toFixed(3)} ms (${viaSession.cpuUs.toFixed(0)} µs CPU), signed ${viaSignature.ms.toFixed(3)} ms (${viaSignature.cpuUs.toFixed(0)} µs CPU)`);
      expect(afterSession).toEqual(before);
      expect(window()).not.toEqual(afterSession);
    } finally {
      db.close();
    }
  });
});

let lastStamp = 0;
/** A signed request's header, as RegistryClient makes it (protocol.ts requestMessage), with timestamps of its own. */
function signedAuthorization(identity: Identity, method: string, path: string): string {
  lastStamp = Math.max(Date.now() + 10_000, lastStamp + 1); // past the client's own timestamps for this ID
  return `AgentVPN ${identity.id} ${lastStamp} ${Buffer.from(identity.sign(requestMessage(method, path, lastStamp))).toString('base64')}`;
}
