// The event hub on a real HTTP stream: changes made while a big snapshot is still being written
// are not queued (a fleet-wide wave used to pass the 1 MiB bound and drop the subscriber) but sent
// by a catch-up pass; a reader that applies snapshot and events ends with the registry's state.
import { afterEach, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeEntry, HubRig, NET, SseReader } from './event-stream-rig.js';

/** ~1 KB per view: 8,000 agents make an 8 MB snapshot, more than loopback's socket buffers hold. */
const PAD = 1000;

describe('event streams: changes during a snapshot', () => {
  let rig: HubRig;

  afterEach(async () => {
    await rig.close();
  });

  const serve = async (agents: Map<string, FakeEntry>, policyJson: () => string, keepAliveMs?: number, count = 8000) => {
    rig = new HubRig();
    return { h: await rig.serve(agents, policyJson, { count, pad: PAD, keepAliveMs }) };
  };

  it('keeps a subscriber through a fleet-wide wave during its snapshot, and its view ends equal to the registry\'s', async () => {
    const agents = new Map<string, FakeEntry>();
    let policyJson = '{"version":1}';
    const { h } = await serve(agents, () => policyJson);

    let round = 0;
    /** One change each of every kind the registry makes: replaced records, liveness, a removal and a rejoin, a policy. */
    const change = () => {
      round++;
      for (let k = 0; k < 50; k++) {
        const id = `a${(round * 131 + k * 977) % 8000}`;
        const old = agents.get(id);
        if (!old) continue;
        const next = k % 2 ? new FakeEntry(id, old.version + 1, old.online, PAD) : new FakeEntry(id, old.version, !old.online, PAD);
        agents.set(id, next);
        h.publish(NET, k % 2 ? 'upsert' : 'offline', next);
      }
      const gone = `a${(round * 7919) % 8000}`;
      if (agents.delete(gone)) h.publishRemoved(NET, gone);
      const back = `b${round}`;
      const fresh = new FakeEntry(back, 0, true, PAD);
      agents.set(back, fresh);
      h.publish(NET, 'upsert', fresh);
      if (round % 10 === 0) h.publishPolicy(NET, (policyJson = `{"version":${round}}`));
    };

    const res = await rig.open();
    res.pause();
    await sleep(200); // the socket buffers fill; the hub waits for 'drain' in the middle of the snapshot
    // The wave: 60 rounds of ~3,100 changed views (~53 KB each): ~3 MB of changes, past the old 1 MiB queue.
    for (let i = 0; i < 60; i++) change();
    let changing = true;
    const stream = new SseReader();
    stream.read(res, () => {
      if (changing && Math.random() < 0.2) change(); // and more while the snapshot, the catch-up and live events are read
    });
    res.resume();
    await sleep(1500);
    changing = false;
    change(); // a last change, sent live
    // Settled: nothing unsent, nobody behind, and no byte arrived for 150 ms.
    for (let i = 0, quiet = 0, last = -1; i < 400 && quiet < 3; i++) {
      await sleep(50);
      const st = h.stats();
      quiet = st.unsentChars === 0 && st.behind === 0 && stream.chars === last ? quiet + 1 : 0;
      last = stream.chars;
    }
    const stats = h.stats();
    console.log(`snapshot of 8,000 views (~8 MB), ${round} rounds of changes; events read ${JSON.stringify(stream.kinds)}; hub ${JSON.stringify(stats)}`);
    expect(stats.dropped).toBe(0);
    expect(stats.caughtUp).toBeGreaterThan(1000); // the wave before the snapshot's end came by the catch-up
    expect(stream.kinds.snapshot).toBe(1);
    expect(stream.views.size).toBe(agents.size);
    for (const [id, e] of agents) expect(stream.views.get(id), id).toEqual({ version: e.version, online: e.online });
    expect(stream.policy).toEqual(JSON.parse(policyJson));
  });

  it('drops a subscriber that takes nothing for a whole keep-alive period while bytes wait; a reader stays', async () => {
    const { h } = await serve(new Map(), () => 'null', 200);
    const stalled = await rig.open();
    stalled.pause(); // the 8 MB snapshot fills the socket buffers and stays there
    const reading = await rig.open();
    let got = 0;
    reading.on('data', (d: Buffer) => (got += d.length));
    // The drop comes within two keep-alive periods; its 'close' a moment later; the reader goes on meanwhile.
    for (let i = 0; i < 200 && !(h.stats().dropped === 1 && h.stats().open === 1 && got > 8_000_000); i++) await sleep(20);
    const stats = h.stats();
    console.log(`after ${stats.dropped ? 'a' : 'no'} stall drop: the reader took ${(got / 2 ** 20).toFixed(1)} MiB; hub ${JSON.stringify(stats)}`);
    expect(stats.dropped).toBe(1);
    expect(stats.open).toBe(1); // the stalled one is closed, the reader is served on
    expect(got).toBeGreaterThan(8_000_000);
  });

  it('drops a subscriber behind once over 1 MiB of removals waits for it (they cannot be coalesced)', async () => {
    const { h } = await serve(new Map(), () => 'null');
    const stalled = await rig.open();
    stalled.pause(); // behind: its 8 MB snapshot is not taken
    await sleep(200);
    const before = h.stats();
    for (let i = 0; i < 30_000; i++) h.publishRemoved(NET, `gone-${i}`); // ~43 B each: ~1.3 MB waiting
    const stats = h.stats();
    console.log(`30,000 removals while behind: before ${JSON.stringify(before)}; after ${JSON.stringify(stats)}`);
    expect(before).toMatchObject({ open: 1, dropped: 0 });
    expect(stats.dropped).toBe(1);
  });

  it('an agent removed while its stream is behind still gets its removal before the stream ends', async () => {
    const agents = new Map<string, FakeEntry>();
    const { h } = await serve(agents, () => 'null', undefined, 10);
    const res = await rig.open();
    res.pause();
    await sleep(100); // the small snapshot is out: live
    for (let v = 1; h.stats().behind === 0 && v < 20_000; v++) {
      const e = new FakeEntry('a1', v, true, PAD);
      agents.set('a1', e);
      h.publish(NET, 'upsert', e); // not read: ~1 KB each until past the bound
    }
    const behind = h.stats().behind;
    agents.delete('a0');
    h.publishRemoved(NET, 'a0');
    h.closeCredential('token:t');
    const stream = new SseReader();
    stream.read(res);
    res.resume();
    await new Promise((r) => res.once('end', r));
    console.log(`behind ${behind}; read after the close: ${JSON.stringify(stream.kinds)}`);
    expect(behind).toBe(1);
    expect(stream.kinds.removed).toBe(1);
    expect(stream.views.has('a0')).toBe(false);
  });
});
