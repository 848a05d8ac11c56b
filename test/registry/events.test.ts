// Event streams: the caps (per credential, in total) and what a subscriber that never reads costs.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { signRecord } from '../../src/registry/record.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { makeAgent, recordFor, stuckStream, type TestAgent } from './hostile-helpers.js';

const NET = 'default';
const PATH = `/v1/events?network=${NET}`;

describe('registry event streams', () => {
  let dir: string;
  let reg: RunningRegistry;
  const agents: TestAgent[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-events-'));
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) a.client.close();
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses streams past the total cap with STREAMS_FULL, and takes new ones once others close', async () => {
    reg = await startRegistry({ db: join(dir, 'registry.db'), limits: { streams: 3 } });
    const tokens = await Promise.all(Array.from({ length: 4 }, () => reg.createToken()));
    const streams = await Promise.all(tokens.map((t) => stuckStream(reg.port, PATH, `Bearer ${t}`)));
    const statuses = streams.map((s) => s.status).sort();
    console.log(`4 streams with a total cap of 3: answers ${statuses.join(', ')}; stats ${JSON.stringify(reg.stats().streams)}`);
    expect(statuses).toEqual([200, 200, 200, 503]);
    for (const s of streams) s.socket.destroy();
    for (let i = 0; i < 50 && reg.stats().streams.open > 0; i++) await sleep(20);
    const again = await stuckStream(reg.port, PATH, `Bearer ${tokens[0]}`);
    again.socket.destroy();
    expect(again.status).toBe(200);
  });

  it('holds a subscriber that does not read behind at a bounded cost, without dropping it; readers keep theirs', async () => {
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    const token = await reg.createToken();
    // 400 agents republishing 10 times each: within each one's change budget (change-pacer.ts), 4,000 changes.
    const busy = await Promise.all(Array.from({ length: 400 }, (_, i) => makeAgent(reg.url, NET, `busy-${i}`, token)));
    agents.push(...busy);
    const stuck = await stuckStream(reg.port, PATH, `Bearer ${token}`);
    const newest = new Map<string, number>();
    const w = busy[0].client.watch({ snapshot: () => {}, change: (_kind, a) => newest.set(a.record.id, Math.max(newest.get(a.record.id) ?? 0, a.record.seq)) });
    // Largest allowed records, republished: each change is ~3.3 KB for every subscriber.
    const capabilities = Array.from({ length: 32 }, (_, j) => `svc.c${String(j).padStart(2, '0')};model=${'m'.repeat(50)}`);
    const endpoints = Array.from({ length: 16 }, (_, j) => `[fd00:1:2:3:4:5:6:${j + 1}]:51820`);
    const lastSeq = 11;
    let mostUnsent = 0;
    for (let seq = 2; seq <= lastSeq; seq++) {
      for (const a of busy) {
        await a.client.publish(signRecord(a.identity, recordFor(a.identity, a.join, `busy-${busy.indexOf(a)}`, { seq, capabilities, endpoints })));
        mostUnsent = Math.max(mostUnsent, reg.stats().streams.unsentChars);
      }
    }
    const caughtUp = () => busy.every((a) => newest.get(a.identity.id) === lastSeq);
    for (let i = 0; i < 250 && !caughtUp(); i++) await sleep(20);
    w.close();
    const streams = reg.stats().streams;
    stuck.socket.destroy();
    const changes = busy.length * (lastSeq - 1);
    console.log(`${changes} changes (~${((changes * 3.4) / 1024).toFixed(1)} MB) for a subscriber that does not read: at most ${mostUnsent} characters held unsent; ` +
      `the reader saw ${[...newest.values()].filter((s) => s === lastSeq).length} of ${busy.length} agents' last records; stats ${JSON.stringify(streams)}`);
    expect(streams.dropped).toBe(0);
    expect(streams.behind).toBe(1);
    expect(streams.paced).toBe(0);
    expect(mostUnsent).toBeLessThanOrEqual(1024 * 1024 + 64 * 1024); // the bound, plus the reader's own few frames
    expect(caughtUp()).toBe(true);
  });
});
