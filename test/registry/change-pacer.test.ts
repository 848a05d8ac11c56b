// A member that publishes or flaps in a loop costs every event stream of its network one write per
// change: past its burst its changes are held and merged, the latest view still goes out, and other
// agents' changes are not held with it.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BURST_CHANGES, ChangePacer } from '../../src/registry/change-pacer.js';
import type { AgentChangeKind, AgentView } from '../../src/registry/protocol.js';
import { signRecord } from '../../src/registry/record.js';
import { startRegistry, type RunningRegistry } from '../../src/registry/server.js';
import { makeAgent, recordFor, type TestAgent } from './hostile-helpers.js';

const NET = 'pace';

describe('ChangePacer', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('sends a burst at once, then one merged change per interval, and an upsert stays an upsert', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] });
    const sent: string[] = [];
    const pacer = new ChangePacer((_n, id, kind) => sent.push(`${id}:${kind}`), 3, 1000);
    for (let i = 0; i < 3; i++) pacer.offer('n', 'a', 'online');
    expect(sent).toEqual(['a:online', 'a:online', 'a:online']);
    pacer.offer('n', 'a', 'upsert');
    pacer.offer('n', 'a', 'offline');
    pacer.offer('n', 'a', 'online');
    pacer.offer('n', 'b', 'upsert'); // another agent has its own bucket
    expect(sent).toEqual(['a:online', 'a:online', 'a:online', 'b:upsert']);
    expect(pacer.paced).toBe(3);
    vi.advanceTimersByTime(999);
    expect(sent).toHaveLength(4);
    vi.advanceTimersByTime(1);
    expect(sent).toEqual(['a:online', 'a:online', 'a:online', 'b:upsert', 'a:upsert']);
    // Idle for the whole burst's refill: a burst again.
    vi.advanceTimersByTime(3000);
    for (let i = 0; i < 3; i++) pacer.offer('n', 'a', 'offline');
    expect(sent.slice(5)).toEqual(['a:offline', 'a:offline', 'a:offline']);
    pacer.stop();
  });

  it('drops what it holds when stopped', () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] });
    const sent: AgentChangeKind[] = [];
    const pacer = new ChangePacer((_n, _id, kind) => sent.push(kind), 1, 1000);
    pacer.offer('n', 'a', 'upsert');
    pacer.offer('n', 'a', 'upsert');
    pacer.stop();
    vi.advanceTimersByTime(5000);
    expect(sent).toEqual(['upsert']);
  });
});

describe('registry: a flapping member', () => {
  let dir: string;
  let reg: RunningRegistry;
  const agents: TestAgent[] = [];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-pacer-'));
    reg = await startRegistry({ db: join(dir, 'registry.db'), network: NET });
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) a.client.close();
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('costs each stream at most its burst and one change per interval; its last view arrives; others are not held', async () => {
    const token = await reg.createToken({ uses: 3 });
    const watcher = await makeAgent(reg.url, NET, 'watcher', token);
    const flapper = await makeAgent(reg.url, NET, 'flapper', token);
    const bystander = await makeAgent(reg.url, NET, 'bystander', token);
    agents.push(watcher, flapper, bystander);

    const seen: { name: string; at: number; view: AgentView }[] = [];
    let live = false;
    const w = watcher.client.watch({
      snapshot: () => (live = true),
      change: (_kind, view) => seen.push({ name: view.record.name, at: Date.now(), view }),
    });
    try {
      for (let i = 0; i < 100 && !live; i++) await sleep(20);
      expect(live).toBe(true);

      // 16 liveness flips and 8 publishes as fast as the registry answers (within its write budget): 24 changes.
      const started = Date.now();
      for (let i = 0; i < 8; i++) {
        await flapper.client.leave();
        await flapper.client.heartbeat();
        await flapper.client.publish(signRecord(flapper.identity, recordFor(flapper.identity, flapper.join, 'flapper', { seq: 2 + i })));
      }
      const lastSeq = 2 + 7;
      const flapDone = Date.now();
      // Another agent's change goes out at once, while the flapper's wait.
      await bystander.client.publish(signRecord(bystander.identity, recordFor(bystander.identity, bystander.join, 'bystander', { seq: 2 })));
      const bystanderSent = Date.now();
      for (let i = 0; i < 250 && !seen.some((s) => s.name === 'bystander'); i++) await sleep(20);
      const bystanderSeen = seen.find((s) => s.name === 'bystander');
      expect(bystanderSeen).toBeDefined();
      expect(bystanderSeen!.at - bystanderSent).toBeLessThan(1500);

      // The flapper's latest record and liveness arrive after its changes were held.
      const latest = () => seen.filter((s) => s.name === 'flapper').at(-1)?.view;
      for (let i = 0; i < 300 && !(latest()?.record.seq === lastSeq && latest()?.online === true); i++) await sleep(20);
      expect(latest()?.record.seq).toBe(lastSeq);
      expect(latest()?.online).toBe(true);

      // What the stream carried for the flapper: its burst, and one per 2 s of flapping (and the one held at its end).
      const flapperEvents = seen.filter((s) => s.name === 'flapper').length;
      const allowed = BURST_CHANGES + Math.ceil((flapDone - started) / 2000) + 1;
      console.log(`24 changes in ${flapDone - started} ms reached the stream as ${flapperEvents} (allowed ${allowed}); bystander's in ${bystanderSeen!.at - bystanderSent} ms`);
      expect(flapperEvents).toBeLessThanOrEqual(allowed);
      expect(flapperEvents).toBeLessThan(24);
      expect(reg.stats().streams.paced).toBeGreaterThanOrEqual(24 - allowed);
    } finally {
      w.close();
    }
  });
});
