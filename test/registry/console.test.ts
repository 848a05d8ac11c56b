import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Identity } from '../../src/identity/identity.js';
import { overlayIPv6 } from '../../src/identity/addresses.js';
import { formatAddress } from '../../src/ip/prefix.js';
import { signRecord, type AgentRecord } from '../../src/registry/record.js';
import { signJoin } from '../../src/registry/protocol.js';
import { MAX_REPORTED_PATHS, signPathReport, type ReportedPath } from '../../src/registry/path-report.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { CONSOLE_JS } from '../../src/registry/console/page-script.js';

/**
 * The console's routes on a real registry (loopback HTTP): the page and its CSP, login by admin
 * token (CSRF header, failed-login budget), the session cookie, escaping in data answers, and the
 * agents' path reports (signed, use-once, bounded). Figures are printed where counted.
 */

const NET = 'default';
const SAME_SITE = { 'x-agentvpn-console': '1' };

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  body: Record<string, unknown>;
}

async function call(reg: RunningRegistry, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  const res = await fetch(reg.url + path, { method, headers, body });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text);
  } catch {
    // the page, or an event stream
  }
  return { status: res.status, headers: res.headers, text, body: parsed };
}

const cookieOf = (a: Answer) => (a.headers.get('set-cookie') ?? '').split(';')[0];

describe('registry console routes', () => {
  let dir: string;
  let reg: RunningRegistry;
  let admin: string;
  let ts = Date.now();
  const stamp = () => (ts = Math.max(Date.now(), ts + 1));

  async function login(): Promise<string> {
    const a = await call(reg, 'POST', '/console/api/login', { ...SAME_SITE, authorization: `Bearer ${admin}` });
    expect(a.status, a.text).toBe(200);
    return cookieOf(a);
  }

  async function joinAndPublish(id: Identity, name: string, caps: string[] = ['llm.plan']): Promise<void> {
    const token = await reg.createToken();
    const j = await call(reg, 'POST', '/v1/join', { 'content-type': 'application/json' }, JSON.stringify(signJoin(id, NET, name, stamp(), token)));
    expect(j.status, j.text).toBe(200);
    const now = Date.now();
    const record: AgentRecord = {
      v: 1, network: NET, id: id.id, name, wgPublicKey: Buffer.from(id.wgPublicKey).toString('base64'), ipv4: j.body.ipv4 as string,
      ipv6: formatAddress(overlayIPv6(NET, id.publicKey)), endpoints: ['192.0.2.1:51820'], capabilities: caps, seq: 1, issuedAt: now, expiresAt: now + 3_600_000,
    };
    const put = await call(reg, 'PUT', `/v1/agents/${id.id}`, { 'content-type': 'application/json' }, JSON.stringify(signRecord(id, record)));
    expect(put.status, put.text).toBe(200);
  }

  const report = (id: Identity, paths: ReportedPath[], timestamp = stamp(), as: Identity = id) =>
    call(reg, 'PUT', `/v1/agents/${id.id}/paths?network=${NET}`, { 'content-type': 'application/json' }, JSON.stringify(signPathReport(as, NET, timestamp, paths)));

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-console-'));
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    admin = await reg.createAdminToken();
  });

  afterEach(async () => {
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves the page with a strict CSP whose hash is the inline script, no framing, no caching', async () => {
    const page = await call(reg, 'GET', '/console');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    const csp = page.headers.get('content-security-policy') ?? '';
    const script = /<script>([\s\S]*)<\/script>/.exec(page.text)![1];
    const hash = createHash('sha256').update(script).digest('base64');
    expect(csp).toContain(`script-src 'sha256-${hash}'`);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|\*/);
    expect(page.text.match(/<script/g)).toHaveLength(1); // one script, the hashed one
    expect(page.text).not.toMatch(/ on[a-z]+=|javascript:|https?:\/\//); // no inline handler, no external asset
    expect(page.headers.get('x-frame-options')).toBe('DENY');
    expect(page.headers.get('x-content-type-options')).toBe('nosniff');
    expect(page.headers.get('cache-control')).toBe('no-store');
    expect((await call(reg, 'GET', '/console/')).status).toBe(200);
    expect((await call(reg, 'POST', '/console')).status).toBe(405);
  });

  it('the script builds the page from text only: no HTML parsing of data anywhere', () => {
    expect(CONSOLE_JS).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\b|new Function|setAttribute\('on|srcdoc/);
    expect(() => new Function(CONSOLE_JS)).not.toThrow(); // it parses (the e2e test runs it in Chromium)
  });

  it('data needs a session; the session comes from an admin token, sent only by the console page', async () => {
    for (const path of ['/console/api/state', '/console/api/events', '/console/api/session']) {
      const a = await call(reg, 'GET', path);
      expect(a.status, path).toBe(401);
      expect(a.body.code).toBe('CONSOLE_LOGIN');
      expect(a.headers.get('cache-control')).toBe('no-store');
      expect((await call(reg, 'GET', path, { cookie: 'avconsole=' + 'A'.repeat(43) })).status).toBe(401);
      // The admin token itself is not a console credential: only the login takes it.
      expect((await call(reg, 'GET', path, { authorization: `Bearer ${admin}` })).status).toBe(401);
    }
    const bearer = { authorization: `Bearer ${admin}` };
    // What a page of another site could send: no custom header, or the browser's own marks of a cross-site request.
    const crossSite = [
      await call(reg, 'POST', '/console/api/login', bearer),
      await call(reg, 'POST', '/console/api/login', { ...bearer, ...SAME_SITE, 'sec-fetch-site': 'cross-site' }),
      await call(reg, 'POST', '/console/api/login', { ...bearer, ...SAME_SITE, origin: 'http://evil.example' }),
    ];
    expect(crossSite.map((a) => a.status)).toEqual([403, 403, 403]);
    expect(crossSite.every((a) => a.body.code === 'CROSS_SITE' && !a.headers.get('set-cookie'))).toBe(true);
    expect((await call(reg, 'POST', '/console/api/login', { ...SAME_SITE, authorization: 'Bearer avadm_wrong' })).status).toBe(401);
    expect((await call(reg, 'GET', '/console/api/login', { ...SAME_SITE, ...bearer })).status).toBe(405);

    const ok = await call(reg, 'POST', '/console/api/login', { ...SAME_SITE, ...bearer, 'sec-fetch-site': 'same-origin', origin: reg.url });
    expect(ok.status, ok.text).toBe(200);
    const setCookie = ok.headers.get('set-cookie') ?? '';
    expect(setCookie).toMatch(/^avconsole=[A-Za-z0-9_-]{43}; Path=\/console; HttpOnly; SameSite=Strict; Max-Age=\d+$/);
    expect(setCookie + ok.text).not.toContain(admin.slice(6));
    const cookie = cookieOf(ok);
    const state = await call(reg, 'GET', '/console/api/state', { cookie });
    expect(state.status, state.text).toBe(200);
    expect(state.body).toMatchObject({ ok: true, network: NET, members: [], tokens: [], policy: null });
    expect(state.headers.get('cache-control')).toBe('no-store');
    expect(state.headers.get('content-security-policy')).toContain("default-src 'none'");
    // The registry's own log has the login (and the failed one), never a token.
    const audit = state.body.audit as { entries: Array<{ type: string }> };
    expect(audit.entries.map((e) => e.type)).toEqual(expect.arrayContaining(['admin.login', 'admin.auth-failed']));
    expect(state.text).not.toContain(admin.slice(6));

    const out = await call(reg, 'POST', '/console/api/logout', { ...SAME_SITE, cookie });
    expect(out.status).toBe(200);
    expect(out.headers.get('set-cookie')).toMatch(/^avconsole=; .*Max-Age=0/);
    expect((await call(reg, 'GET', '/console/api/state', { cookie })).status).toBe(401);
  });

  it('failed logins are budgeted per address before any token is hashed, as on the admin API', async () => {
    const codes = await Promise.all(Array.from({ length: 30 }, (_, i) =>
      call(reg, 'POST', '/console/api/login', { ...SAME_SITE, authorization: `Bearer avadm_guess${i}` }).then((a) => a.body.code as string)));
    const limited = codes.filter((c) => c === 'RATE_LIMITED').length;
    const checked = codes.filter((c) => c === 'UNAUTHORIZED').length;
    console.log(`console login guessing: 30 wrong tokens at once: ${checked} checked, ${limited} refused before hashing`);
    // 5 per address per second (admin-auth.ts); on a busy machine the burst may span two or three windows.
    expect(checked).toBeLessThanOrEqual(15);
    expect(limited).toBeGreaterThanOrEqual(15);
  });

  it('data answers escape "<": an operator policy or an agent capability holding markup stays text', async () => {
    const cookie = await login();
    const markup = '<img src=x onerror=alert(1)>';
    const policy = `{ "grants": [] } // ${markup}`;
    const put = await call(reg, 'PUT', '/v1/admin/policy', { authorization: `Bearer ${admin}` }, policy);
    expect(put.status, put.text).toBe(200);
    const id = Identity.generate();
    await joinAndPublish(id, 'evil', ['evil;html=<script>alert(1)</script>']);
    const state = await call(reg, 'GET', '/console/api/state', { cookie });
    expect(state.text).not.toContain('<');
    expect((state.body.policy as { text: string }).text).toBe(policy);
    expect(state.headers.get('content-type')).toMatch(/^application\/json/);
    expect(state.headers.get('x-content-type-options')).toBe('nosniff');
  });

  it('agents report their paths: signed by themselves, usable once, bounded, kept for members only', async () => {
    const cookie = await login();
    const a = Identity.generate();
    const b = Identity.generate();
    const stranger = Identity.generate();
    await joinAndPublish(a, 'alpha');
    await joinAndPublish(b, 'beta');
    const paths: ReportedPath[] = [
      { peer: b.id, kind: 'direct', endpoint: '192.0.2.18:51820', rttMs: 0.42 },
      { peer: stranger.id, kind: 'relay', endpoint: '203.0.113.10:7443', rttMs: null },
    ];
    const t = stamp();
    const first = await report(a, paths, t);
    expect(first.status, first.text).toBe(200);
    expect(first.body.kept).toBe(true);
    const state = await call(reg, 'GET', '/console/api/state', { cookie });
    expect((state.body.paths as Record<string, { paths: ReportedPath[] }>)[a.id].paths).toEqual(paths);

    const refused = {
      replayed: (await report(a, paths, t)).body.code,
      forged: (await report(a, paths, stamp(), b)).body.code,
      stranger: (await report(stranger, paths)).body.code,
      tooMany: (await report(b, Array.from({ length: MAX_REPORTED_PATHS + 1 }, () => Identity.generate()).map((p) => ({ peer: p.id, kind: 'direct', endpoint: '192.0.2.1:1', rttMs: 1 })))).body.code,
      markup: (await report(b, [{ peer: a.id, kind: 'direct', endpoint: '<b>x</b>:1', rttMs: 1 }])).body.code,
      badKind: (await report(b, [{ peer: a.id, kind: 'tunnel' as 'direct', endpoint: '192.0.2.1:1', rttMs: 1 }])).body.code,
    };
    console.log('path reports refused:', JSON.stringify(refused));
    // The replay lands within 2 s of the kept report: answered {kept:false} before its signature is even checked.
    expect(refused).toEqual({ replayed: undefined, forged: undefined, stranger: 'NOT_JOINED', tooMany: 'BAD_REQUEST', markup: 'BAD_REQUEST', badKind: 'BAD_REQUEST' });
    await new Promise((r) => setTimeout(r, 2_100));
    expect((await report(a, paths, t)).body.code).toBe('REPLAYED');
    expect((await report(a, paths, stamp(), b)).body.code).toBe('BAD_SIGNATURE');
    // Too soon after a kept report: not kept, no work done.
    expect((await report(a, [], stamp())).body.kept).toBe(true);
    expect((await report(a, paths, stamp())).body.kept).toBe(false);
    const after = await call(reg, 'GET', '/console/api/state', { cookie });
    expect((after.body.paths as Record<string, { paths: ReportedPath[] }>)[a.id].paths).toEqual([]);
    expect(Object.keys(after.body.paths as object)).toEqual([a.id]);
    expect(after.body.pathReports).toMatchObject({ accepted: 2, tooSoon: 3 });
    console.log('path report counters:', JSON.stringify(after.body.pathReports));
  });

  it('malformed path reports spend the failed-signature budget before their body is read', async () => {
    const a = Identity.generate();
    await joinAndPublish(a, 'alpha');
    // A stranger who knows a member's ID: 257 paths (over the limit) make the registry read and check ~28 KiB each.
    const junk = JSON.stringify({ timestamp: Date.now(), signature: 'x', paths: Array.from({ length: MAX_REPORTED_PATHS + 1 }, () => ({ peer: a.id, kind: 'direct', endpoint: '192.0.2.1:1', rttMs: 1 })) });
    const codes = await Promise.all(Array.from({ length: 60 }, () =>
      call(reg, 'PUT', `/v1/agents/${a.id}/paths?network=${NET}`, { 'content-type': 'application/json' }, junk).then((r) => r.body.code as string)));
    const parsed = codes.filter((c) => c === 'BAD_REQUEST').length;
    const limited = codes.filter((c) => c === 'RATE_LIMITED').length;
    console.log(`60 malformed path reports at once: ${parsed} read and checked, ${limited} refused before reading`);
    // 20 failures per address per second (signature-budget.ts); the burst may span a window or two.
    expect(parsed).toBeLessThanOrEqual(40);
    expect(limited).toBeGreaterThanOrEqual(20);
  });

  it('the event stream starts with a snapshot of the agents and ends at logout', async () => {
    const cookie = await login();
    await joinAndPublish(Identity.generate(), 'alpha');
    const ctl = new AbortController();
    const res = await fetch(reg.url + '/console/api/events', { headers: { cookie }, signal: ctl.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(res.headers.get('cache-control')).toBe('no-store');
    const reader = res.body!.getReader();
    let text = '';
    while (!text.includes('\n\n')) text += new TextDecoder().decode((await reader.read()).value);
    expect(text).toMatch(/^event: snapshot\ndata: \{"agents":\[\{"record":\{"v":1,"network":"default","id":"av[a-z2-7]+","name":"alpha"/);
    await call(reg, 'POST', '/console/api/logout', { ...SAME_SITE, cookie });
    for (;;) if ((await reader.read()).done) break; // the stream was closed by the logout
    ctl.abort();
  });
});
