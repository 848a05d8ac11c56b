// Event streams: the caps (per credential, in total) and what happens to a subscriber that never reads.
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

  it('drops a subscriber that does not read once its unsent changes pass the bound; readers keep theirs', async () => {
    reg = await startRegistry({ db: join(dir, 'registry.db') });
    const token = await reg.createToken();
    const busy = await makeAgent(reg.url, NET, 'busy', token);
    agents.push(busy);
    const stuck = await stuckStream(reg.port, PATH, `Bearer ${token}`);
    let newest = 0;
    const w = busy.client.watch({ snapshot: () => {}, change: (_kind, a) => (newest = Math.max(newest, a.record.seq)) });
    // Largest allowed records, republished: each change is ~3.3 KB for every subscriber.
    const capabilities = Array.from({ length: 32 }, (_, j) => `svc.c${String(j).padStart(2, '0')};model=${'m'.repeat(50)}`);
    const endpoints = Array.from({ length: 16 }, (_, j) => `[fd00:1:2:3:4:5:6:${j + 1}]:51820`);
    let seq = 1;
    while (seq < 4000 && reg.stats().streams.dropped === 0) {
      await busy.client.publish(signRecord(busy.identity, recordFor(busy.identity, busy.join, 'busy', { seq: ++seq, capabilities, endpoints })));
    }
    for (let i = 0; i < 250 && newest < seq; i++) await sleep(20);
    w.close();
    stuck.socket.destroy();
    const streams = reg.stats().streams;
    console.log(`the subscriber that does not read was dropped after ${seq - 1} changes (~${(((seq - 1) * 3.4) / 1024).toFixed(1)} MB sent its way, ` +
      `most of it taken by the kernel's socket buffers); the reader saw up to seq ${newest} of ${seq}; stats ${JSON.stringify(streams)}`);
    expect(streams.dropped).toBe(1);
    expect(newest).toBe(seq);
  });
});
