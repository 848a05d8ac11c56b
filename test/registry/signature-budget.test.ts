// A stranger who knows a member's agent ID sends requests in its name with made-up signatures:
// each would cost a signature check. Failures are budgeted per address before the check.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HEARTBEAT_LABEL, signTimestamp } from '../../src/registry/protocol.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { makeAgent, type TestAgent } from './hostile-helpers.js';
import type { IncomingMessage } from 'node:http';
import { SignatureBudget } from '../../src/registry/signature-budget.js';

const NET = 'default';

/** POSTs JSON from a chosen source address; resolves with the status and the refusal code. */
function post(port: number, path: string, body: unknown, localAddress: string): Promise<{ status: number; code?: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'POST', localAddress, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () => {
        let code: string | undefined;
        try {
          code = (JSON.parse(text) as { code?: string }).code;
        } catch {
          code = undefined;
        }
        resolve({ status: res.statusCode ?? 0, code });
      });
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

describe('registry signature budget', () => {
  let dir: string;
  let reg: RunningRegistry;
  let member: TestAgent;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-sigs-'));
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    member = await makeAgent(reg.url, NET, 'member', await reg.createToken());
  });

  afterEach(async () => {
    member.client.close();
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('checks only a few forged signatures per address and second; the member itself is still heard', async () => {
    const path = `/v1/agents/${member.identity.id}/heartbeat?network=${NET}`;
    const forged = (i: number) => ({ timestamp: Date.now() + i, signature: Buffer.alloc(64, i % 251).toString('base64') });
    const t0 = Date.now();
    const answers: Array<{ status: number; code?: string }> = [];
    for (let i = 0; i < 20; i++) answers.push(...(await Promise.all(Array.from({ length: 25 }, (_, j) => post(reg.port, path, forged(i * 25 + j), '127.0.0.1')))));
    const seconds = Math.max(1, Math.ceil((Date.now() - t0) / 1000));
    const checked = answers.filter((a) => a.code === 'BAD_SIGNATURE').length;
    const limited = answers.filter((a) => a.code === 'RATE_LIMITED').length;
    const honest = await post(reg.port, path, signTimestamp(member.identity, HEARTBEAT_LABEL, NET, Date.now() + 1000), '127.0.0.2');
    console.log(`${answers.length} forged heartbeats in ~${seconds} s: ${checked} signatures checked, ${limited} refused before the check; the member's own heartbeat: ${honest.status}`);
    expect(checked + limited).toBe(answers.length);
    expect(checked).toBeLessThanOrEqual(25 * (seconds + 1));
    expect(honest.status).toBe(200);
  });

  it('a member writing past its budget is refused before its signature is checked; forgeries in its name spend none of it', async () => {
    const heartbeat = (a: TestAgent, i: number, from = '127.0.0.1') =>
      post(reg.port, `/v1/agents/${a.identity.id}/heartbeat?network=${NET}`, signTimestamp(a.identity, HEARTBEAT_LABEL, NET, Date.now() + i), from);
    const answers: Array<{ status: number; code?: string }> = [];
    for (let i = 0; i < 60; i++) answers.push(await heartbeat(member, i));
    const taken = answers.filter((a) => a.status === 200).length;
    const limited = answers.filter((a) => a.code === 'AGENT_RATE_LIMITED');
    console.log(`60 heartbeats of one member back to back: ${taken} taken, ${limited.length} refused (429 AGENT_RATE_LIMITED)`);
    expect(taken + limited.length).toBe(60);
    expect(limited.length).toBeGreaterThan(0);
    expect(limited[0].status).toBe(429);
    expect(reg.stats().refused.AGENT_RATE_LIMITED).toBe(limited.length);

    // Another member: 100 forged heartbeats in its name (from five addresses, within their failure budgets), then its own 30.
    const other = await makeAgent(reg.url, NET, 'other', await reg.createToken());
    try {
      const forged = await Promise.all(Array.from({ length: 100 }, (_, i) => post(reg.port, `/v1/agents/${other.identity.id}/heartbeat?network=${NET}`,
        { timestamp: Date.now() + i, signature: Buffer.alloc(64, i + 1).toString('base64') }, `127.0.0.${3 + (i % 5)}`)));
      expect(forged.every((a) => a.code === 'BAD_SIGNATURE' || a.code === 'RATE_LIMITED')).toBe(true);
      const own: number[] = [];
      for (let i = 0; i < 25; i++) own.push((await heartbeat(other, 1000 + i, '127.0.0.2')).status);
      expect(own.every((st) => st === 200)).toBe(true);
    } finally {
      other.client.close();
    }
  });

  it('concurrent writes of one member cannot all pass the budget before any is spent', async () => {
    const agent = await makeAgent(reg.url, NET, 'concurrent', await reg.createToken());
    try {
      const answers = await Promise.all(Array.from({ length: 60 }, (_, i) => post(reg.port, `/v1/agents/${agent.identity.id}/heartbeat?network=${NET}`,
        signTimestamp(agent.identity, HEARTBEAT_LABEL, NET, Date.now() + i), '127.0.0.2')));
      const taken = answers.filter((a) => a.status === 200).length;
      console.log(`60 concurrent heartbeats of one member: ${taken} taken`);
      expect(taken).toBeLessThanOrEqual(30);
    } finally {
      agent.client.close();
    }
  });

  it('replays of a member\'s record or heartbeat (any member sees its records) spend none of its write budget', async () => {
    const victim = await makeAgent(reg.url, NET, 'victim', await reg.createToken());
    try {
      // Its record as every member sees it in a list, replayed 40 times from another address.
      const seen = (await member.client.get('victim')) as unknown as { record: unknown; signature: string };
      const put = (from: string) => new Promise<{ status: number; code?: string }>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port: reg.port, path: `/v1/agents/${victim.identity.id}?network=${NET}`, method: 'PUT', localAddress: from,
          headers: { 'content-type': 'application/json' } }, (res) => {
          let text = '';
          res.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () => resolve({ status: res.statusCode ?? 0, code: (JSON.parse(text) as { code?: string }).code }));
        });
        req.on('error', reject);
        req.end(JSON.stringify({ record: seen.record, signature: seen.signature }));
      });
      const replays: Array<{ status: number; code?: string }> = [];
      for (let i = 0; i < 40; i++) replays.push(await put('127.0.0.9'));
      // A heartbeat captured on the wire, sent again 10 times.
      const captured = signTimestamp(victim.identity, HEARTBEAT_LABEL, NET, Date.now() + 5);
      const first = await post(reg.port, `/v1/agents/${victim.identity.id}/heartbeat?network=${NET}`, captured, '127.0.0.2');
      const again: Array<{ status: number; code?: string }> = [];
      for (let i = 0; i < 10; i++) again.push(await post(reg.port, `/v1/agents/${victim.identity.id}/heartbeat?network=${NET}`, captured, '127.0.0.9'));
      // The victim's own writes: the rest of its burst is still there.
      const own: number[] = [];
      for (let i = 0; i < 20; i++) own.push((await post(reg.port, `/v1/agents/${victim.identity.id}/heartbeat?network=${NET}`,
        signTimestamp(victim.identity, HEARTBEAT_LABEL, NET, Date.now() + 100 + i), '127.0.0.2')).status);
      console.log(`40 replayed records: ${replays.map((r) => r.code).filter((c, i, a) => a.indexOf(c) === i).join(', ')}; 10 replayed heartbeats: ${again.map((r) => r.code).filter((c, i, a) => a.indexOf(c) === i).join(', ')}; then ${own.filter((st) => st === 200).length} of the victim's 20 own heartbeats taken`);
      expect(replays.every((r) => r.code === 'STALE_RECORD')).toBe(true);
      expect(first.status).toBe(200);
      expect(again.every((r) => r.code === 'REPLAYED' || r.code === 'RATE_LIMITED')).toBe(true);
      expect(own.every((st) => st === 200)).toBe(true);
    } finally {
      victim.client.close();
    }
  });

  it('verified() refuses before running a check once the address spent its failures, and counts each failure', () => {
    const budget = new SignatureBudget();
    const from = (a: string) => ({ socket: { remoteAddress: a } }) as unknown as IncomingMessage;
    let checks = 0;
    const forged = () => { checks++; return false; };
    for (let i = 0; i < 20; i++) expect(budget.verified(from('192.0.2.1'), forged)).toBe(false);
    expect(() => budget.verified(from('192.0.2.1'), forged)).toThrow(expect.objectContaining({ code: 'RATE_LIMITED' }));
    expect(checks).toBe(20); // the 21st was refused before its check ran
    expect(budget.verified(from('198.51.100.1'), () => true)).toBe(true); // another address is not affected
  });
});
