import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { overlayIPv6 } from '../../src/identity/addresses.js';
import { Identity } from '../../src/identity/identity.js';
import { formatAddress } from '../../src/ip/prefix.js';
import { RegistryClient } from '../../src/registry/client.js';
import { signRecord } from '../../src/registry/record.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { perRequestMicros, routeBench } from './route-bench.js';

/**
 * The route table (route-table.ts, request-schemas.ts) seen from outside: every route answers a
 * bad request with a refusal naming the field, a wrong method with 405 and an `allow` header;
 * hostile inputs are refused cheaply and the registry keeps answering.
 */

const NET = 'default';

interface Answer {
  status: number;
  code: string;
  message: string;
  allow: string | null;
  ms: number;
}

/** One raw request (node:http: the path is sent exactly as given, no URL normalisation). */
function call(reg: RunningRegistry, method: string, path: string, o: { body?: unknown; raw?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const payload = o.raw ?? (o.body === undefined ? undefined : JSON.stringify(o.body));
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const length = payload === undefined ? {} : { 'content-length': String(Buffer.byteLength(payload)) };
    const req = httpRequest({ host: '127.0.0.1', port: reg.port, method, path, headers: { 'content-type': 'application/json', ...length, ...o.headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => {
        let body: { code?: string; message?: string } = {};
        try {
          body = JSON.parse(text);
        } catch {
          // a page, or an answer from node:http itself (431)
        }
        resolve({ status: res.statusCode ?? 0, code: body.code ?? 'ok', message: body.message ?? '', allow: (res.headers.allow as string | undefined) ?? null, ms: performance.now() - started });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

describe('registry route table', () => {
  let dir: string;
  let reg: RunningRegistry;
  let token: string;
  let admin: string;
  const member = Identity.generate();
  let badRequests = 0;
  /** Counts the BAD_REQUEST answers this file caused, to compare with /v1/stats. */
  const counted = async (a: Promise<Answer>) => {
    const answer = await a;
    if (answer.code === 'BAD_REQUEST') badRequests++;
    return answer;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'avreg-routes-'));
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    token = await reg.createToken();
    admin = await reg.createAdminToken();
    const client = new RegistryClient({ url: reg.url, identity: member, network: NET });
    const j = await client.join('member', token);
    const now = Date.now();
    await client.publish(signRecord(member, {
      v: 1, network: NET, id: member.id, name: 'member', wgPublicKey: Buffer.from(member.wgPublicKey).toString('base64'), ipv4: j.ipv4,
      ipv6: formatAddress(overlayIPv6(NET, member.publicKey)), endpoints: ['192.0.2.1:51820'], capabilities: ['llm.plan'], seq: 1, issuedAt: now, expiresAt: now + 3_600_000,
    }));
    client.close();
  });

  afterAll(async () => {
    await reg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('every route refuses a bad path, query or body naming the field, and another method with 405 and allow', async () => {
    const id = member.id;
    const stamp = Date.now();
    const sig = 'A'.repeat(86) + '==';
    const bearer = { authorization: `Bearer ${token}` };
    // One bad request per route: [route, request, expected code, text the message must hold].
    const cases: Array<[string, () => Promise<Answer>, string, string]> = [
      ['GET /v1/agents', () => call(reg, 'GET', '/v1/agents?network=default&network=other', { headers: bearer }), 'BAD_REQUEST', 'invalid query: /network must be string'],
      ['GET /v1/agents/:id', () => call(reg, 'GET', '/v1/agents/Not_A_Name', { headers: bearer }), 'BAD_REQUEST', 'invalid path: /id must match pattern'],
      ['GET /v1/events', () => call(reg, 'GET', '/v1/events?network=-bad'), 'BAD_REQUEST', 'invalid query: /network'],
      ['GET /v1/policy', () => call(reg, 'GET', '/v1/policy?network=BAD'), 'BAD_REQUEST', 'invalid query: /network'],
      ['POST /v1/sessions', () => call(reg, 'POST', '/v1/sessions?network=BAD'), 'BAD_REQUEST', 'invalid query: /network'],
      ['GET /v1/stats', () => call(reg, 'GET', '/v1/stats?network=a..b'), 'BAD_REQUEST', 'invalid query: /network'],
      ['POST /v1/join', () => call(reg, 'POST', '/v1/join', { body: { network: NET, id, name: 'member', timestamp: String(stamp), signature: sig } }), 'BAD_REQUEST', 'invalid body: /timestamp must be integer'],
      ['PUT /v1/agents/:id', () => call(reg, 'PUT', `/v1/agents/${id}`, { body: { record: {}, signature: sig, junk: 1 } }), 'MALFORMED_RECORD', 'invalid body: an unknown field "junk"'],
      ['POST /v1/agents/:id/heartbeat', () => call(reg, 'POST', `/v1/agents/${id}/heartbeat`, { body: { timestamp: -1, signature: sig } }), 'BAD_REQUEST', 'invalid body: /timestamp must be >= 0'],
      ['DELETE /v1/agents/:id', () => call(reg, 'DELETE', `/v1/agents/${id}`, { body: { timestamp: stamp } }), 'BAD_REQUEST', 'invalid body: /signature is missing'],
      ['PUT /v1/agents/:id/paths', () => call(reg, 'PUT', `/v1/agents/${id}/paths`, { body: { timestamp: stamp, signature: sig, paths: [{ peer: id, kind: 'wormhole', endpoint: 'x', rttMs: 1 }] } }),
        'BAD_REQUEST', 'invalid body: /paths/0/kind must be equal to one of the allowed values'],
      ['GET /v1/admin/agents', () => call(reg, 'GET', '/v1/admin/agents?network=%20'), 'BAD_REQUEST', 'invalid query: /network'],
      ['DELETE /v1/admin/agents/:id', () => call(reg, 'DELETE', '/v1/admin/agents/a%2Fb'), 'BAD_REQUEST', 'invalid path: /id'],
      ['POST /v1/admin/agents/:id/block', () => call(reg, 'POST', `/v1/admin/agents/${'x'.repeat(100)}/block`), 'BAD_REQUEST', 'invalid path: /id'],
      ['GET /v1/admin/policy', () => call(reg, 'GET', '/v1/admin/policy?network=_'), 'BAD_REQUEST', 'invalid query: /network'],
      ['PUT /v1/admin/policy', () => call(reg, 'PUT', '/v1/admin/policy?network=_', { raw: '{}' }), 'BAD_REQUEST', 'invalid query: /network'],
      ['POST /v1/audit/ship', () => call(reg, 'POST', `/v1/audit/ship?agent=${id}`, { body: { agent: id, from: 0, entries: ['x'], checkpoint: 'x', proof: [], extra: 1 } }),
        'AUDIT_MALFORMED', 'invalid body: an unknown field "extra"'],
      ['GET /v1/audit/head', () => call(reg, 'GET', '/v1/audit/head'), 'BAD_REQUEST', 'invalid query: /agent is missing'],
      ['GET /v1/audit/entries', () => call(reg, 'GET', `/v1/audit/entries?agent=${id}&from=-1`), 'BAD_REQUEST', 'invalid query: /from must match pattern'],
      ['GET /console/api/state', () => call(reg, 'GET', '/console/api/state?network=NOPE'), 'BAD_REQUEST', 'invalid query: /network'],
      ['GET /console/api/events', () => call(reg, 'GET', '/console/api/events?network=NOPE'), 'BAD_REQUEST', 'invalid query: /network'],
    ];
    // Routes without a schema to fail: they answer their own method, and 405 to another.
    const unchecked: Array<[string, string, string]> = [
      ['GET /healthz', 'POST', '/healthz'], ['GET /v1/audit/witness', 'PUT', '/v1/audit/witness'], ['GET /console', 'DELETE', '/console'], ['GET /console/', 'POST', '/console/'],
      ['POST /console/api/login', 'GET', '/console/api/login'], ['POST /console/api/logout', 'GET', '/console/api/logout'], ['GET /console/api/session', 'PUT', '/console/api/session'],
    ];
    const table = routeBench().routes;
    expect([...cases.map((c) => c[0]), ...unchecked.map((c) => c[0])].sort()).toEqual([...table].sort());

    const answers: string[] = [];
    for (const [route, request, code, text] of cases) {
      const a = await counted(request());
      answers.push(`${route}: ${a.status} ${a.code} "${a.message}"`);
      expect(`${route}: ${a.code}`).toBe(`${route}: ${code}`);
      expect(a.status).toBe(400);
      expect(a.message).toContain(text);
    }
    console.log(`${cases.length} bad requests, one per route with a schema:\n  ${answers.join('\n  ')}`);

    // Every route: another method is 405 with the methods the path takes; none is 404.
    const allows: string[] = [];
    for (const route of table) {
      const [method, pattern] = route.split(' ');
      const path = pattern.replace(':id', id);
      const other = method === 'PUT' ? 'PATCH' : 'PUT';
      if (!table.includes(`${other} ${pattern}`)) {
        const a = await call(reg, other, path);
        expect(`${other} ${path}: ${a.status} ${a.code}`).toBe(`${other} ${path}: 405 METHOD_NOT_ALLOWED`);
        expect(a.allow?.split(', ')).toContain(method);
        allows.push(`${other} ${pattern}: allow ${a.allow}`);
      }
    }
    for (const [, method, path] of unchecked) expect((await call(reg, method, path)).allow).not.toBeNull();
    console.log(`405s: ${allows.length}, e.g. ${allows.slice(0, 3).join('; ')}`);
    const unknown = await call(reg, 'GET', '/v1/agentz');
    expect([unknown.status, unknown.code, unknown.allow]).toEqual([404, 'NOT_FOUND', null]);
    // The console's headers are on its refusals too.
    const consoleMiss = await new Promise<Record<string, unknown>>((resolve) => httpRequest({ port: reg.port, host: '127.0.0.1', path: '/console/api/nope' }, (res) => {
      res.resume();
      resolve(res.headers);
    }).end());
    expect(consoleMiss['x-frame-options']).toBe('DENY');
  });

  it('refuses hostile inputs cheaply and keeps answering; /v1/stats counts the schema refusals', async () => {
    const id = member.id;
    const sig = 'A'.repeat(86) + '==';
    const join = { network: NET, id, name: 'member', timestamp: Date.now(), signature: sig };
    const stranger = { ...join, id: Identity.generate().id, name: 'stranger' };
    const deep = `{"network":${'['.repeat(5_000)}${']'.repeat(5_000)}}`;
    const hostile: Array<[string, () => Promise<Answer>, string, string]> = [
      ['10,000-element array', () => call(reg, 'POST', '/v1/join', { body: { ...join, token: new Array(10_000).fill(0) } }), 'BAD_REQUEST', '/token must be string'],
      ['10,000 audit entries', () => call(reg, 'POST', `/v1/audit/ship?agent=${id}`, { body: { agent: id, from: 0, entries: new Array(10_000).fill('x'), checkpoint: 'x', proof: [] } }),
        'AUDIT_MALFORMED', '/entries must NOT have more than 512 items'],
      ['nesting 5,000 deep', () => call(reg, 'POST', '/v1/join', { raw: deep }), 'BAD_REQUEST', 'nested deeper than 8'],
      ['60,000-character name', () => call(reg, 'POST', '/v1/join', { body: { ...join, name: 'a'.repeat(60_000) } }), 'BAD_REQUEST', '/name must match pattern'],
      ['__proto__ in a record body', () => call(reg, 'PUT', `/v1/agents/${id}`, { raw: `{"__proto__":{"polluted":1},"record":{},"signature":"${sig}"}` }), 'MALFORMED_RECORD', 'unknown field "__proto__"'],
      ['__proto__ as the join token', () => call(reg, 'POST', '/v1/join', { raw: JSON.stringify(stranger).replace('"network"', '"__proto__":{"token":"x"},"network"') }), 'BAD_TOKEN', 'a join token is needed'],
      ['__proto__ in the query', () => call(reg, 'GET', '/v1/agents?__proto__=x&network[]=y', { headers: { authorization: `Bearer ${token}` } }), 'ok', ''],
      ['%2F in :id', () => call(reg, 'POST', `/v1/agents/${id}%2F..%2F${id}/heartbeat`, { body: { timestamp: 1, signature: sig } }), 'BAD_REQUEST', 'invalid path: /id'],
      ['bad %-encoding in :id', () => call(reg, 'GET', '/v1/agents/%E0%A4%A'), 'BAD_REQUEST', 'invalid percent-encoding'],
      ['10,000 empty segments', () => call(reg, 'GET', '/'.repeat(10_000)), 'NOT_FOUND', 'no such endpoint'],
      ['7,000 segments under /v1/agents', () => call(reg, 'GET', `/v1/agents${'/a'.repeat(7_000)}`), 'NOT_FOUND', 'no such endpoint'],
      ['10,000 segments (20 KB request line)', () => call(reg, 'GET', '/a'.repeat(10_000)), 'ok', ''],
    ];
    const lines: string[] = [];
    for (const [what, request, code, text] of hostile) {
      const a = await counted(request());
      lines.push(`${what}: ${a.status} ${a.code} in ${a.ms.toFixed(1)} ms`);
      expect(`${what}: ${a.code}`).toBe(`${what}: ${code}`);
      expect(a.message).toContain(text);
    }
    console.log(`hostile requests:\n  ${lines.join('\n  ')}`);
    // The 20 KB request line never reached the routes: node:http refused its headers (431).
    expect(lines[lines.length - 1]).toContain('431');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    // Still answering, and every BAD_REQUEST this file caused is counted.
    const answer = await fetch(`${reg.url}/v1/stats`, { headers: { authorization: `Bearer ${token}` } });
    expect(answer.status).toBe(200);
    const { refused } = (await answer.json()) as { refused: Record<string, number> };
    console.log(`/v1/stats refused.BAD_REQUEST = ${refused.BAD_REQUEST} (this file sent ${badRequests}); INTERNAL ${refused.INTERNAL ?? 0}`);
    expect(refused.BAD_REQUEST).toBe(badRequests);
    expect(refused.INTERNAL).toBeUndefined();
  });

  it('costs few µs per request to dispatch and validate (in process, no sockets)', async () => {
    const b = routeBench();
    const auth = { authorization: 'Bearer avt_bench' };
    const read = await b.request('GET', '/v1/agents/planner', { headers: auth });
    expect(read.status).toBe(200);
    const skewed = { timestamp: Date.now() + 3_600_000, signature: 'A'.repeat(86) + '==' };
    expect((await b.request('POST', `/v1/agents/${b.member.id}/heartbeat`, { body: skewed })).code).toBe('CLOCK_SKEW');
    const reads = await perRequestMicros(20_000, () => b.request('GET', '/v1/agents/planner', { headers: auth }));
    const beats = await perRequestMicros(20_000, () => b.request('POST', `/v1/agents/${b.member.id}/heartbeat`, { body: skewed }));
    console.log(`in process, 20,000 each: GET /v1/agents/NAME ${reads.toFixed(2)} µs/request; heartbeat body to its clock check ${beats.toFixed(2)} µs/request`);
    // Generous: a request's dispatch and validation is microseconds, not a millisecond.
    expect(reads).toBeLessThan(500);
    expect(beats).toBeLessThan(500);
  });
});
