import { request } from 'node:http';
import { connect } from 'node:net';
import { Gauge, Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { RENDER_REUSE_MS, MetricsServer, type RenderReuse } from '../../src/metrics/server.js';

const silent = { info() {}, warn() {} };

function get(port: number, path: string, method = 'GET'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A registry with one gauge whose collection is counted (it stands for the walk over every peer). */
function countedRegistry(): { registry: Registry; collections: () => number } {
  const registry = new Registry();
  let n = 0;
  new Gauge({ name: 'test_collections', help: 'collections run', registers: [registry], collect() { this.set(++n); } });
  return { registry, collections: () => n };
}

const servers: MetricsServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});

async function start(registry: Registry, reuse?: RenderReuse): Promise<MetricsServer> {
  // Port 0 (any free one) is no valid --metrics value, but the server takes it.
  const s = new MetricsServer(registry, { host: '127.0.0.1', port: 0, loopback: true }, silent, reuse);
  await s.start();
  servers.push(s);
  return s;
}

/** Scrape requests, 50 at a time. */
async function flood(port: number, requests: number): Promise<number> {
  let ok = 0;
  for (let i = 0; i < requests; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, requests - i) }, () => get(port, '/metrics')));
    ok += batch.filter((r) => r.status === 200).length;
  }
  return ok;
}

describe('metrics server', () => {
  it('serves the registry in the text format on /metrics only; other paths and methods are refused, counted by a bounded reason', async () => {
    const { registry } = countedRegistry();
    const s = await start(registry);
    const ok = await get(s.port, '/metrics');
    expect(ok.status).toBe(200);
    expect(ok.body).toContain('test_collections 1');
    for (let i = 0; i < 20; i++) expect((await get(s.port, `/junk-${i}`)).status).toBe(404);
    expect((await get(s.port, '/metrics', 'POST')).status).toBe(405);
    await new Promise((r) => setTimeout(r, RENDER_REUSE_MS + 50)); // past the reuse window: a fresh collection
    const after = await get(s.port, '/metrics?x=1');
    // The refusals carry a reason label from a fixed set, never the path that was asked for.
    expect(after.body).toMatch(/agentvpn_metrics_requests_refused_total\{reason="not-found"\} 20/);
    expect(after.body).toMatch(/agentvpn_metrics_requests_refused_total\{reason="method"\} 1/);
    expect(after.body).not.toContain('junk');
  });

  it('a flood of scrapes costs one collection per reuse window, not one per request', async () => {
    const requests = 400;
    const withReuse = countedRegistry();
    const a = await start(withReuse.registry);
    const t0 = performance.now();
    expect(await flood(a.port, requests)).toBe(requests);
    const seconds = (performance.now() - t0) / 1000;
    // Without the reuse (what a plain prom-client endpoint does): one collection per request.
    const without = countedRegistry();
    const b = await start(without.registry, { minMs: 0, costFactor: 0 });
    expect(await flood(b.port, requests)).toBe(requests);
    console.log(`${requests} scrapes in ${seconds.toFixed(2)} s: ${withReuse.collections()} collections with reuse, ${without.collections()} without`);
    expect(without.collections()).toBe(requests);
    // One per 500 ms window at most (plus one at each window's edge).
    expect(withReuse.collections()).toBeLessThanOrEqual(Math.ceil(seconds / 0.5) + 2);
    expect(withReuse.collections()).toBeLessThan(requests / 10);
  });

  it('a slow collection (a big fleet) stretches the window: a flood keeps collecting to about a tenth of the time', async () => {
    /** A registry whose collection takes ~150 ms of CPU, and the share of wall time spent in it under a flood. */
    const busyShare = async (reuse?: RenderReuse) => {
      const registry = new Registry();
      let busy = 0;
      new Gauge({
        name: 'test_slow', help: 'a slow collection', registers: [registry],
        collect() {
          const t = performance.now();
          while (performance.now() - t < 150);
          busy += performance.now() - t;
          this.set(1);
        },
      });
      const s = await start(registry, reuse);
      const t0 = performance.now();
      while (performance.now() - t0 < 3_000) await Promise.all(Array.from({ length: 20 }, () => get(s.port, '/metrics')));
      return busy / (performance.now() - t0);
    };
    const stretched = await busyShare();
    const fixed = await busyShare({ minMs: RENDER_REUSE_MS, costFactor: 0 });
    console.log(`a 150 ms collection under a 3 s flood: ${(stretched * 100).toFixed(0)} % of the time collecting with the window stretched, ${(fixed * 100).toFixed(0)} % with a fixed 500 ms window`);
    expect(stretched).toBeLessThan(0.15);
    expect(fixed).toBeGreaterThan(0.2);
  });

  it('holds at most 16 connections; idle ones past that are closed at once', async () => {
    const { registry } = countedRegistry();
    const s = await start(registry);
    const sockets = await Promise.all(Array.from({ length: 40 }, () => new Promise<ReturnType<typeof connect>>((resolve) => {
      const c = connect(s.port, '127.0.0.1', () => resolve(c));
      c.on('error', () => {});
    })));
    await new Promise((r) => setTimeout(r, 200));
    const held = await new Promise<number>((resolve) => (s as unknown as { server: { getConnections(cb: (e: Error | null, n: number) => void): void } }).server.getConnections((_e, n) => resolve(n)));
    console.log(`40 idle connections opened: the server holds ${held}`);
    expect(held).toBeLessThanOrEqual(16);
    for (const c of sockets) c.destroy();
  });

  it('16 silent connections (any local user can open them) do not keep a scrape out: the idlest makes room', async () => {
    const { registry } = countedRegistry();
    const s = await start(registry);
    const silentOnes = await Promise.all(Array.from({ length: 16 }, () => new Promise<ReturnType<typeof connect>>((resolve) => {
      const c = connect(s.port, '127.0.0.1', () => resolve(c));
      c.on('error', () => {});
    })));
    await new Promise((r) => setTimeout(r, 200));
    const scrapes = [];
    for (let i = 0; i < 4; i++) scrapes.push((await get(s.port, '/metrics').catch((e: Error) => ({ status: 0, body: e.message }))).status);
    const closed = silentOnes.filter((c) => c.destroyed || c.readableEnded).length;
    console.log(`16 silent connections held, then 4 scrapes: ${JSON.stringify(scrapes)}; ${closed} silent ones closed to make room`);
    for (const c of silentOnes) c.destroy();
    expect(scrapes).toEqual([200, 200, 200, 200]);
  });

  it('connections churned from another address as fast as they open never evict a scraper waiting to send its request', async () => {
    const { registry } = countedRegistry();
    const s = await start(registry);
    let churning = true;
    let opened = 0;
    const churn = async () => {
      while (churning) {
        await new Promise<void>((resolve) => {
          const c = connect({ port: s.port, host: '127.0.0.1', localAddress: '127.0.0.2' }, () => resolve());
          c.on('error', () => resolve());
          c.on('close', () => resolve());
          setTimeout(() => c.destroy(), 2_000).unref();
        });
        opened++;
      }
    };
    const churners = Array.from({ length: 8 }, churn);
    await new Promise((r) => setTimeout(r, 100));
    // A scraper across a network: its request comes a round trip (here 50 ms) after its connection.
    const slowScrape = () => new Promise<number>((resolve) => {
      const c = connect(s.port, '127.0.0.1', () => setTimeout(() => c.write('GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n'), 50));
      let head = '';
      c.setEncoding('latin1').on('data', (d: string) => (head += d));
      c.on('error', () => {});
      c.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0)));
    });
    const scrapes: number[] = [];
    for (let i = 0; i < 20; i++) scrapes.push(await slowScrape());
    churning = false;
    await Promise.all(churners);
    console.log(`${opened} connections churned from 127.0.0.2 meanwhile; 20 scrapes from 127.0.0.1: ${scrapes.filter((st) => st === 200).length} answered`);
    expect(opened).toBeGreaterThan(100);
    expect(scrapes.every((st) => st === 200)).toBe(true);
  });
});
