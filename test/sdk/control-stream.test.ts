import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ControlServer } from '../../src/daemon/control-server.js';
import { CONTROL_STREAM, MAX_STREAM_QUEUE_BYTES, MAX_STREAM_STALL_MS, type ControlStream, type StreamSink } from '../../src/daemon/control-stream.js';
import { controlSocketPath } from '../../src/daemon/paths.js';
import { openDaemonStream } from '../../src/daemon/control-client.js';

/** A stream the test drives by hand: the server's side of streaming, without the event hub's budget. */
class HandStream implements ControlStream {
  readonly [CONTROL_STREAM] = true as const;
  readonly accepted = { stream: 'hand' };
  sink: StreamSink | null = null;
  closed = false;
  attach(sink: StreamSink): void {
    this.sink = sink;
  }
  close(): void {
    this.closed = true;
    this.sink = null;
  }
}

let base: string;
const savedRunDir = process.env.AGENTVPN_RUN_DIR;
const servers: ControlServer[] = [];
const sockets: Socket[] = [];

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'agentvpn-stream-'));
  process.env.AGENTVPN_RUN_DIR = join(base, 'run');
});
afterEach(async () => {
  vi.restoreAllMocks();
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0)) await s.stop();
});
afterAll(async () => {
  if (savedRunDir === undefined) delete process.env.AGENTVPN_RUN_DIR;
  else process.env.AGENTVPN_RUN_DIR = savedRunDir;
  await rm(base, { recursive: true, force: true });
});

async function serve(iface: string): Promise<{ server: ControlServer; streams: HandStream[] }> {
  const streams: HandStream[] = [];
  const server = new ControlServer(iface, { events: () => { const s = new HandStream(); streams.push(s); return s; }, echo: (p) => p });
  servers.push(server);
  await server.start();
  return { server, streams };
}

/** A raw subscriber: sends the request, resolves with the socket once the ok line came, keeps later lines. */
function subscribe(iface: string): Promise<{ sock: Socket; lines: string[] }> {
  return new Promise((resolve, reject) => {
    const sock = connect(controlSocketPath(iface));
    sockets.push(sock);
    const lines: string[] = [];
    let buf = '';
    let opened = false;
    sock.setEncoding('utf8');
    sock.on('data', (c: string) => {
      buf += c;
      const parts = buf.split('\n');
      buf = parts.pop()!;
      for (const l of parts) {
        if (!opened) {
          opened = true;
          expect(JSON.parse(l)).toEqual({ id: 1, ok: true, result: { stream: 'hand' } });
          resolve({ sock, lines });
        } else lines.push(l);
      }
    });
    sock.on('error', reject);
    sock.write('{"id":1,"method":"events"}\n');
  });
}

const tick = () => new Promise((r) => setImmediate(r));

describe('control socket streams', () => {
  it('a subscriber that stops reading costs at most MAX_STREAM_QUEUE_BYTES, then learns what it missed (lagged)', async () => {
    const { server, streams } = await serve('slow0');
    const { sock, lines } = await subscribe('slow0');
    sock.pause();
    const EVENTS = 40_000;
    const event = JSON.stringify({ type: 'path.changed', at: 0, id: 'x'.repeat(60), name: 'worker', ipv4: '100.64.0.9', ipv6: 'fd00::9', kind: 'relay', endpoint: 'relay', rttMs: 1.5, pad: 'p'.repeat(100) });
    let peak = 0;
    for (let i = 0; i < EVENTS; i++) {
      streams[0].sink!.send(event);
      if (i % 500 === 0) {
        peak = Math.max(peak, server.streamsStatus().queuedBytes);
        await tick();
      }
    }
    peak = Math.max(peak, server.streamsStatus().queuedBytes);
    const published = (EVENTS * (event.length + 17)) / 1e6;
    const { eventsDropped } = server.streamsStatus();
    console.log(`slow subscriber: ${published.toFixed(1)} MB published, peak queued in the daemon ${(peak / 1024).toFixed(0)} KB, ${eventsDropped} events dropped`);
    expect(peak).toBeLessThanOrEqual(MAX_STREAM_QUEUE_BYTES + 1024);
    expect(eventsDropped).toBeGreaterThan(EVENTS / 2);

    sock.resume();
    // Each time the queue gets back under its bound, one `lagged` marker says how many were dropped since the last.
    const markers = () => lines.filter((l) => l.includes('"lagged"')).map((l) => JSON.parse(l) as { id: number; event: { type: string; dropped: number } });
    const droppedTold = () => markers().reduce((sum, m) => sum + m.event.dropped, 0);
    await vi.waitFor(() => expect(droppedTold()).toBe(eventsDropped), { timeout: 5000 });
    const delivered = lines.filter((l) => l.includes('"path.changed"')).length;
    console.log(`slow subscriber: ${delivered} delivered + ${markers().length} lagged markers, dropped=${droppedTold()}`);
    expect(markers().every((m) => m.id === 1 && m.event.type === 'lagged' && m.event.dropped > 0)).toBe(true);
    expect(delivered + droppedTold()).toBe(EVENTS);
  });

  it("the TS client that is not read stops reading the socket (at 1,024 unread): the daemon's bound takes over, then lagged", async () => {
    const { server, streams } = await serve('client0');
    const { stream } = await openDaemonStream('client0', 'events');
    const EVENTS = 40_000;
    const event = JSON.stringify({ type: 'peer.online', at: 0, id: 'x'.repeat(60), name: 'n', ipv4: '', ipv6: '', pad: 'p'.repeat(100) });
    for (let i = 0; i < EVENTS; i++) {
      streams[0].sink!.send(event);
      if (i % 500 === 0) await tick();
    }
    await new Promise((r) => setTimeout(r, 200));
    const { eventsDropped, queuedBytes } = server.streamsStatus();
    console.log(`unread TS client: ${stream.unreadCount} events held by the client, ${eventsDropped} of ${EVENTS} dropped by the daemon, ${(queuedBytes / 1024).toFixed(0)} KB queued there`);
    expect(stream.unreadCount).toBeLessThanOrEqual(2048); // 1,024 and what the last read carried
    expect(eventsDropped).toBeGreaterThan(0);
    let delivered = 0;
    let lagged = 0;
    while (delivered + lagged < EVENTS) {
      const ev = (await stream.next())!;
      if (ev.type === 'lagged') lagged += ev.dropped;
      else delivered++;
    }
    expect(lagged).toBe(eventsDropped);
    stream.close();
    expect(await stream.next()).toBeNull();
  });

  it('a subscriber stalled past MAX_STREAM_STALL_MS is ended and frees its connection', async () => {
    const { server, streams } = await serve('stall0');
    const { sock } = await subscribe('stall0');
    sock.pause();
    const event = JSON.stringify({ type: 'lagged-test', pad: 'p'.repeat(500) });
    for (let i = 0; i < 5000 && server.streamsStatus().eventsDropped === 0; i++) {
      streams[0].sink!.send(event);
      await tick();
    }
    expect(server.streamsStatus().eventsDropped).toBeGreaterThan(0);
    const later = Date.now() + MAX_STREAM_STALL_MS + 1000;
    vi.spyOn(Date, 'now').mockReturnValue(later);
    streams[0].sink!.send(event);
    await vi.waitFor(() => expect(server.streamsStatus().open).toBe(0), { timeout: 5000 });
    expect(server.streamsStatus().slowClosed).toBe(1);
    expect(streams[0].closed).toBe(true);
  });

  it('a stream connection takes no further requests (they queue no replies); closing it closes the stream', async () => {
    const { server, streams } = await serve('one0');
    const { sock, lines } = await subscribe('one0');
    sock.pause();
    for (let i = 0; i < 2000; i++) sock.write(`{"id":${i + 2},"method":"echo","params":{"pad":"${'p'.repeat(500)}"}}\n`);
    await new Promise((r) => setTimeout(r, 300));
    console.log(`2000 requests sent on a stream's connection: ${server.streamsStatus().queuedBytes} bytes of replies queued`);
    expect(server.streamsStatus().queuedBytes).toBe(0);
    sock.resume();
    streams[0].sink!.send('{"type":"x"}');
    await vi.waitFor(() => expect(lines.length).toBe(1));
    expect(JSON.parse(lines[0])).toEqual({ id: 1, event: { type: 'x' } });
    expect(server.streamsStatus().open).toBe(1);
    sock.destroy();
    await vi.waitFor(() => expect(streams[0].closed).toBe(true));
    expect(server.streamsStatus().open).toBe(0);
  });

  it('stopping the server ends each stream with DAEMON_STOPPING', async () => {
    const { server } = await serve('stop0');
    const { sock, lines } = await subscribe('stop0');
    const ended = new Promise((r) => sock.on('close', r));
    await server.stop();
    servers.length = 0;
    await ended;
    expect(JSON.parse(lines.at(-1)!)).toMatchObject({ id: 1, end: { code: 'DAEMON_STOPPING' } });
  });
});
