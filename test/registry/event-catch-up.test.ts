// The event hub on a real HTTP stream: changes made while a big snapshot is still being written
// are not queued (a fleet-wide wave used to pass the 1 MiB bound and drop the subscriber) but sent
// by a catch-up pass; a reader that applies snapshot and events ends with the registry's state.
import { afterEach, describe, expect, it } from 'vitest';
import { createServer, get, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { EventHub, type Viewable } from '../../src/registry/events.js';

const NET = 'n';
/** ~1 KB per view: 8,000 agents make an 8 MB snapshot, more than loopback's socket buffers hold. */
const PAD = 'x'.repeat(1000);

class FakeEntry implements Viewable {
  eventSeq = 0;
  constructor(readonly id: string, readonly version: number, readonly online = true) {}
  get json(): string {
    return JSON.stringify({ record: { id: this.id }, version: this.version, online: this.online, pad: PAD });
  }
}

interface View {
  version: number;
  online: boolean;
}

/** Reads an SSE stream into a map of agent views, as a client does; `onData` runs for each chunk. */
function reader(res: IncomingMessage, onData: () => void) {
  const views = new Map<string, View>();
  const kinds: Record<string, number> = {};
  const got = { bytes: 0 };
  let policy: unknown = undefined;
  // Chunks of the frame under way: joined only when it ends (the 8 MB snapshot is one frame).
  let parts: string[] = [];
  const apply = (frame: string) => {
    const event = /^event: (.*)$/m.exec(frame)?.[1];
    const data = /^data: (.*)$/m.exec(frame)?.[1];
    if (!event || data === undefined) return;
    kinds[event] = (kinds[event] ?? 0) + 1;
    const d = JSON.parse(data);
    if (event === 'snapshot') {
      for (const a of d.agents) views.set(a.record.id, { version: a.version, online: a.online });
      policy = d.policy;
    } else if (event === 'removed') {
      views.delete(d.id);
    } else if (event === 'policy') {
      policy = d;
    } else {
      views.set(d.agent.record.id, { version: d.agent.version, online: d.agent.online });
    }
  };
  res.setEncoding('utf8');
  res.on('data', (chunk: string) => {
    got.bytes += chunk.length;
    // A frame ends in this chunk, or across its start ("\n" | "\n").
    const ends = chunk.includes('\n\n') || (chunk.startsWith('\n') && parts.length > 0 && parts[parts.length - 1].endsWith('\n'));
    if (!ends) {
      parts.push(chunk);
    } else {
      let text = parts.join('') + chunk;
      parts = [];
      let end = text.indexOf('\n\n', Math.max(0, text.length - chunk.length - 1));
      while (end >= 0) {
        apply(text.slice(0, end));
        text = text.slice(end + 2);
        end = text.indexOf('\n\n');
      }
      if (text) parts.push(text);
    }
    onData();
  });
  return { views, kinds, got, policy: () => policy };
}

describe('event streams: changes during a snapshot', () => {
  let server: Server | undefined;
  let hub: EventHub | undefined;
  const responses: IncomingMessage[] = [];

  afterEach(async () => {
    for (const r of responses.splice(0)) r.destroy(); // a failed test must not go on reading into the next
    hub?.stop();
    server?.closeAllConnections();
    await new Promise((r) => server?.close(r));
  });

  /** A hub serving `agents` (`count` of ~1 KB each) on a real HTTP server; resolves with its port. */
  const serve = async (agents: Map<string, FakeEntry>, policyJson: () => string, keepAliveMs?: number, count = 8000) => {
    for (let i = 0; i < count; i++) agents.set(`a${i}`, new FakeEntry(`a${i}`, 0));
    const h = (hub = new EventHub({ streams: 10, streamsPerCredential: 10 }, keepAliveMs));
    h.start();
    server = createServer((_req, res) => void h.subscribe(NET, 'token:t', res, () => agents.values(), policyJson, null));
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    return { h, port: (server.address() as AddressInfo).port };
  };
  const open = (port: number) => new Promise<IncomingMessage>((resolve) => get({ host: '127.0.0.1', port, path: '/' }, (r) => resolve(responses[responses.push(r) - 1])));

  it('keeps a subscriber through a fleet-wide wave during its snapshot, and its view ends equal to the registry\'s', async () => {
    const agents = new Map<string, FakeEntry>();
    let policyJson = '{"version":1}';
    const { h, port } = await serve(agents, () => policyJson);

    let round = 0;
    /** One change each of every kind the registry makes: replaced records, liveness, a removal and a rejoin, a policy. */
    const change = () => {
      round++;
      for (let k = 0; k < 50; k++) {
        const id = `a${(round * 131 + k * 977) % 8000}`;
        const old = agents.get(id);
        if (!old) continue;
        const next = k % 2 ? new FakeEntry(id, old.version + 1, old.online) : new FakeEntry(id, old.version, !old.online);
        agents.set(id, next);
        h.publish(NET, k % 2 ? 'upsert' : 'offline', next);
      }
      const gone = `a${(round * 7919) % 8000}`;
      if (agents.delete(gone)) h.publishRemoved(NET, gone);
      const back = `b${round}`;
      const fresh = new FakeEntry(back, 0);
      agents.set(back, fresh);
      h.publish(NET, 'upsert', fresh);
      if (round % 10 === 0) h.publishPolicy(NET, (policyJson = `{"version":${round}}`));
    };

    const res = await open(port);
    res.pause();
    await sleep(200); // the socket buffers fill; the hub waits for 'drain' in the middle of the snapshot
    // The wave: 60 rounds of ~3,100 changed views (~53 KB each): ~3 MB of changes, past the old 1 MiB queue.
    for (let i = 0; i < 60; i++) change();
    let changing = true;
    const stream = reader(res, () => {
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
      quiet = st.unsentChars === 0 && st.behind === 0 && stream.got.bytes === last ? quiet + 1 : 0;
      last = stream.got.bytes;
    }
    const stats = h.stats();
    console.log(`snapshot of 8,000 views (~8 MB), ${round} rounds of changes; events read ${JSON.stringify(stream.kinds)}; hub ${JSON.stringify(stats)}`);
    expect(stats.dropped).toBe(0);
    expect(stats.caughtUp).toBeGreaterThan(1000); // the wave before the snapshot's end came by the catch-up
    expect(stream.kinds.snapshot).toBe(1);
    expect(stream.views.size).toBe(agents.size);
    for (const [id, e] of agents) expect(stream.views.get(id), id).toEqual({ version: e.version, online: e.online });
    expect(stream.policy()).toEqual(JSON.parse(policyJson));
  });

  it('drops a subscriber that takes nothing for a whole keep-alive period while bytes wait; a reader stays', async () => {
    const { h, port } = await serve(new Map(), () => 'null', 200);
    const stalled = await open(port);
    stalled.pause(); // the 8 MB snapshot fills the socket buffers and stays there
    const reading = await open(port);
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
    const { h, port } = await serve(new Map(), () => 'null');
    const stalled = await open(port);
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
    const { h, port } = await serve(agents, () => 'null', undefined, 10);
    const res = await open(port);
    res.pause();
    await sleep(100); // the small snapshot is out: live
    for (let v = 1; h.stats().behind === 0 && v < 20_000; v++) {
      const e = new FakeEntry('a1', v);
      agents.set('a1', e);
      h.publish(NET, 'upsert', e); // not read: ~1 KB each until past the bound
    }
    const behind = h.stats().behind;
    agents.delete('a0');
    h.publishRemoved(NET, 'a0');
    h.closeCredential('token:t');
    const stream = reader(res, () => {});
    res.resume();
    await new Promise((r) => res.once('end', r));
    console.log(`behind ${behind}; read after the close: ${JSON.stringify(stream.kinds)}`);
    expect(behind).toBe(1);
    expect(stream.kinds.removed).toBe(1);
    expect(stream.views.has('a0')).toBe(false);
  });
});
