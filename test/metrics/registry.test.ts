import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryMetrics } from '../../src/metrics/registry.js';
import { ROUTES, routeTemplate } from '../../src/metrics/registry-routes.js';
import { startRegistryWithRelay, type RunningRegistryWithRelay } from '../../src/cli/registry-with-relay.js';
import { httpGet, makeAgent } from '../registry/hostile-helpers.js';
import { samples, valueOf } from './exposition.js';

const NET = 'lab';

describe('registry metrics', () => {
  let dir: string;
  let reg: RunningRegistryWithRelay;
  const metrics = new RegistryMetrics();

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'avpn-metrics-'));
    reg = await startRegistryWithRelay({ db: join(dir, 'registry.db'), network: NET, requestObserver: metrics.observe });
    metrics.watch(reg);
  });
  afterAll(async () => {
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('counts agents, online agents and requests by route template and status, with a latency histogram', async () => {
    const token = await reg.createToken();
    const a = await makeAgent(reg.url, NET, 'alpha', token);
    await makeAgent(reg.url, NET, 'beta', token);
    await a.client.heartbeat();
    const text = await metrics.registry.metrics();
    expect(valueOf(text, 'agentvpn_registry_agents')).toBe(2);
    expect(valueOf(text, 'agentvpn_registry_agents_online')).toBe(2);
    expect(valueOf(text, 'agentvpn_registry_event_subscribers')).toBe(0);
    expect(valueOf(text, 'agentvpn_registry_relay_sessions')).toBe(0);
    expect(valueOf(text, 'agentvpn_registry_http_requests_total', { route: '/v1/join', method: 'POST', status: '200' })).toBe(2);
    expect(valueOf(text, 'agentvpn_registry_http_requests_total', { route: '/v1/agents/:id', method: 'PUT', status: '200' })).toBe(2);
    expect(valueOf(text, 'agentvpn_registry_http_requests_total', { route: '/v1/agents/:id/heartbeat', method: 'POST', status: '200' })).toBe(1);
    expect(valueOf(text, 'agentvpn_registry_http_request_duration_seconds_count', { route: '/v1/join', method: 'POST' })).toBe(2);
    expect(valueOf(text, 'agentvpn_registry_http_request_duration_seconds_bucket', { route: '/v1/join', method: 'POST', le: '+Inf' })).toBe(2);
    // The built-in relay's counters are there too, every drop reason from the first scrape.
    expect(valueOf(text, 'agentvpn_relay_drops_total', { reason: 'bad-signature' })).toBe(0);
    expect(valueOf(text, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    // SQLite has no change feed: no series at all, so an alert on "connected == 0" means PostgreSQL trouble only.
    for (const name of ['agentvpn_registry_change_feed_connected', 'agentvpn_registry_change_feed_reconnects_total', 'agentvpn_registry_change_feed_notifications_total']) {
      expect(samples(text, name), name).toEqual([]);
    }
  });

  it('an attacker cannot create label values: 1,500 requests to random paths, IDs and methods land on the fixed templates', async () => {
    const before = await metrics.registry.metrics();
    const seriesBefore = samples(before, 'agentvpn_registry_http_requests_total').length;
    const randoms: string[] = [];
    const junk = Array.from({ length: 1500 }, (_, i) => {
      const r = Math.random().toString(36).slice(2);
      randoms.push(r);
      return [`/x${r}`, `/v1/agents/${r}`, `/v1/agents/${r}/heartbeat`, `/v1/admin/agents/${r}/block`, `/v1/audit/${r}`, `/v1/${r}/${r}`, `/%zz${r}`, `/console/${r}`][i % 8];
    });
    for (let i = 0; i < junk.length; i += 100) await Promise.all(junk.slice(i, i + 100).map((p) => httpGet(reg.port, p)));
    const text = await metrics.registry.metrics();
    const series = samples(text, 'agentvpn_registry_http_requests_total');
    const routes = new Set(series.map((s) => s.labels.route));
    const statuses = new Set(series.map((s) => s.labels.status));
    const total = series.reduce((n, s) => n + s.value, 0);
    console.log(`${junk.length} junk requests: ${series.length} request series (${seriesBefore} before), ${routes.size} route values, ${statuses.size} status values`);
    expect(total).toBeGreaterThanOrEqual(junk.length);
    for (const r of routes) expect(ROUTES).toContain(r);
    expect(series.length).toBeLessThan(40);
    for (const r of randoms) expect(text).not.toContain(r); // no part of a path in any label
  });

  it('route templates follow the registry\'s dispatch', () => {
    expect(routeTemplate('/healthz')).toBe('/healthz');
    expect(routeTemplate('/v1/agents?network=lab&cap=x')).toBe('/v1/agents');
    expect(routeTemplate('/v1/%61gents/abc')).toBe('/v1/agents/:id'); // decoded, as routes.ts decodes it
    expect(routeTemplate('/v1/agents/abc/heartbeat')).toBe('/v1/agents/:id/heartbeat');
    expect(routeTemplate('/v1/agents/abc/paths')).toBe('/v1/agents/:id/paths');
    expect(routeTemplate('/console/api/agents')).toBe('/console');
    expect(routeTemplate('/v1/agents/')).toBe('other');
    expect(routeTemplate('/v1/admin/agents/abc')).toBe('/v1/admin/agents/:id');
    expect(routeTemplate('/v1/admin/agents/abc/block')).toBe('/v1/admin/agents/:id/block');
    expect(routeTemplate('/v1/audit/ship')).toBe('/v1/audit/ship');
    expect(routeTemplate('/v1/audit/nope')).toBe('other');
    expect(routeTemplate('/%E0%A4%A')).toBe('other');
    expect(routeTemplate(undefined)).toBe('other');
  });
});
