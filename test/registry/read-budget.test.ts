// A malicious member reads in a loop (lookups, 1,000-agent pages, event streams that reconnect for
// a snapshot each time) to take the registry's event loop from the rest of the fleet. Its reads
// are budgeted per credential, in units of the work they cost; other members are not slowed.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AgentVpnError } from '../../src/errors.js';
import { agentAuthorization } from '../../src/registry/protocol.js';
import { AGENTS_PER_UNIT, READ_BURST, READ_COST, READ_RATE, STREAM_BURST, STREAM_RATE } from '../../src/registry/read-budget.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { httpGet, makeAgent, type TestAgent } from './hostile-helpers.js';

const NET = 'default';
const FLEET = 300;

/** Runs `read` until it is refused (or `max` times): how many were answered, the refusal, and the seconds it took. */
async function readUntilRefused(read: () => Promise<unknown>, max: number): Promise<{ answered: number; refusal: AgentVpnError | null; seconds: number }> {
  const t0 = performance.now();
  let answered = 0;
  for (; answered < max; answered++) {
    try {
      await read();
    } catch (e) {
      return { answered, refusal: e as AgentVpnError, seconds: (performance.now() - t0) / 1000 };
    }
  }
  return { answered, refusal: null, seconds: (performance.now() - t0) / 1000 };
}

/** The most reads of `cost` units each a full budget and `seconds` of refill can pay for. */
const mostAffordable = (cost: number, seconds: number, burst = READ_BURST, rate = READ_RATE) => Math.ceil((burst + rate * seconds) / cost) + 1;

describe('registry read budget', () => {
  let dir: string;
  let reg: RunningRegistry;
  const agents: TestAgent[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-reads-'));
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    const token = await reg.createToken({ uses: null });
    for (let i = 0; i < FLEET; i += 30) {
      agents.push(...(await Promise.all(Array.from({ length: Math.min(30, FLEET - i) }, (_, j) => makeAgent(reg.url, NET, `agent-${i + j}`, token)))));
    }
  }, 120_000);

  afterAll(async () => {
    for (const a of agents) a.client.close();
    await reg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a member looking up in a loop is refused past its budget; another member is answered', async () => {
    const [greedy, other] = agents;
    const lookups = await readUntilRefused(() => greedy.client.get('agent-7'), 5_000);
    console.log(`lookups in a loop under a read session: ${lookups.answered} answered in ${lookups.seconds.toFixed(2)} s, then ${lookups.refusal?.code}: ${lookups.refusal?.message}`);
    expect(lookups.refusal?.code).toBe('AGENT_RATE_LIMITED');
    expect(lookups.refusal?.message).toMatch(/retry in \d+ ms/);
    expect(lookups.answered).toBeGreaterThanOrEqual(READ_BURST / READ_COST - 5); // opening the session took a signed read
    expect(lookups.answered).toBeLessThanOrEqual(mostAffordable(READ_COST, lookups.seconds));
    expect((await other.client.get('agent-7')).record.name).toBe('agent-7');
    expect(reg.stats().refused.AGENT_RATE_LIMITED).toBeGreaterThanOrEqual(1);
  });

  it('a list page costs by the agents it sends; streams that start from a snapshot are counted apart', async () => {
    const lister = agents[2];
    const pages = await readUntilRefused(async () => expect((await lister.client.listPage({})).agents).toHaveLength(FLEET), 5_000);
    const pageCost = READ_COST + FLEET / AGENTS_PER_UNIT;
    console.log(`${FLEET}-agent pages in a loop: ${pages.answered} answered in ${pages.seconds.toFixed(2)} s (${pageCost} units each), then ${pages.refusal?.code}`);
    expect(pages.refusal?.code).toBe('AGENT_RATE_LIMITED');
    expect(pages.answered).toBeLessThanOrEqual(mostAffordable(pageCost, pages.seconds));
    expect(pages.answered).toBeGreaterThanOrEqual(Math.floor((READ_BURST - 10) / pageCost));

    // A stream that reconnects for a snapshot each time.
    const streamer = agents[3];
    const path = `/v1/events?network=${NET}`;
    const t0 = performance.now();
    const statuses: number[] = [];
    while (statuses.at(-1) !== 429 && statuses.length < 1_000) {
      // The answer's first bytes are enough: the snapshot is spent when the stream starts. (Timestamps a minute ahead: the client's own, later, must not collide with them.)
      const status = await new Promise<number>((resolve, reject) => {
        const req = httpGetStream(reg.port, path, agentAuthorization(streamer.identity, 'GET', path, Date.now() + 60_000 + statuses.length), resolve);
        req.on('error', reject);
      });
      statuses.push(status);
    }
    const seconds = (performance.now() - t0) / 1000;
    const opened = statuses.filter((s) => s === 200).length;
    console.log(`event streams reconnecting for a snapshot in a loop: ${opened} opened in ${seconds.toFixed(2)} s, then ${statuses.at(-1)}`);
    expect(statuses.at(-1)).toBe(429);
    expect(opened).toBeGreaterThanOrEqual(STREAM_BURST);
    expect(opened).toBeLessThanOrEqual(mostAffordable(1, seconds, STREAM_BURST, STREAM_RATE));
    // Its lookups are still answered: the snapshots did not spend its reads.
    expect((await streamer.client.get('agent-9')).record.name).toBe('agent-9');
  });

  it('reads signed in a member\'s name with made-up signatures spend none of its budget', async () => {
    const victim = agents[4];
    const path = `/v1/agents/agent-9?network=${NET}`;
    const forged = (i: number) => `AgentVPN ${victim.identity.id} ${Date.now() + i} ${Buffer.alloc(64, i % 251).toString('base64url')}`;
    const answers = [];
    for (let i = 0; i < 1_500; i += 50) answers.push(...(await Promise.all(Array.from({ length: 50 }, (_, j) => httpGet(reg.port, path, { localAddress: '127.0.0.3', headers: { authorization: forged(i + j) } })))));
    expect(answers.every((a) => a.status === 401 || a.status === 429)).toBe(true);
    // Its own reads still have the whole budget: past what a burst alone could pay for if the forgeries had spent it.
    const own = await readUntilRefused(() => victim.client.get('agent-9'), READ_BURST / 2);
    console.log(`1,500 forged reads in a member's name, then its own: ${own.answered} of ${READ_BURST / 2} answered`);
    expect(own.refusal).toBeNull();
  });
});

/** GET with an event-stream accept header; resolves with the status, then drops the connection. */
function httpGetStream(port: number, path: string, authorization: string, done: (status: number) => void) {
  const req = request({ host: '127.0.0.1', port, path, agent: false, headers: { accept: 'text/event-stream', authorization } }, (res) => {
    done(res.statusCode ?? 0);
    res.destroy();
  });
  req.end();
  return req;
}
