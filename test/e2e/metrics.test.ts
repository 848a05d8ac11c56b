import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AGENTVPN_BIN, Lab, REPO_ROOT, renderWgQuickConfig, startAgentVpn, startLabAgent, waitFor, waitForFleet, wgKeyPair, type LabAgent, type LabProcess, type LabRegistry,
} from '../../src/lab/index.js';
import { fetchAndHash, labReady, makeRandomFile, startHttpServer } from './checks.js';

/**
 * Debian's real Prometheus scrapes two agents, the registry and a standalone relay in the lab
 * (scrape interval 1 s, its own config and storage), and its query API shows an agent's rx bytes
 * grow once traffic flows. Everything listens on lab addresses; Prometheus runs in the registry's
 * namespace and is asked on that namespace's loopback.
 */
const PROMETHEUS = '/usr/bin/prometheus';
const REGISTRY_IP = '203.0.113.10';
const NETWORK = 'lab';
const AGENT_METRICS_PORT = 9100;
const REGISTRY_METRICS = `${REGISTRY_IP}:9101`;
const RELAY_METRICS = `${REGISTRY_IP}:9102`;
const PROMETHEUS_API = 'http://127.0.0.1:9090/api/v1';
/** What alpha downloads from beta over the tunnel. */
const TRANSFER_MB = 4;

describe.runIf(labReady(['ip', 'curl', 'python3', 'prometheus']))('metrics: a real Prometheus scrapes the daemon, the registry and the relay', () => {
  let lab: Lab;
  let regNs: string;
  let registry: LabRegistry;
  let prometheus: LabProcess | null = null;
  let promDir: string;
  const agents: { agent: LabAgent; underlay: string }[] = [];

  /** One instant query; the samples it returns (metric labels and value). */
  async function query(q: string): Promise<{ metric: Record<string, string>; value: number }[]> {
    const r = await lab.exec(regNs, ['curl', '-sS', '--max-time', '5', '--get', '--data-urlencode', `query=${q}`, `${PROMETHEUS_API}/query`]);
    if (r.code !== 0) return [];
    const body = JSON.parse(r.stdout) as { status: string; data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
    if (body.status !== 'success') throw new Error(`query ${q} failed: ${r.stdout}`);
    return body.data.result.map((s) => ({ metric: s.metric, value: Number(s.value[1]) }));
  }

  const scalar = async (q: string): Promise<number | undefined> => (await query(q))[0]?.value;

  beforeAll(async () => {
    lab = new Lab();
    const hub = await lab.addRouter('hub');
    regNs = await lab.addNamespace('reg');
    await lab.connect(hub, regNs, { a: '203.0.113.1/24', b: `${REGISTRY_IP}/24`, ifB: 'eth0' });
    await lab.ip(regNs, ['route', 'add', 'default', 'via', '203.0.113.1']);

    // The registry (with its built-in relay) and a standalone relay, each with metrics on a lab address.
    const db = join(lab.dir, 'registry.db');
    const url = `http://${REGISTRY_IP}:7443`;
    const regProc = lab.spawn(regNs, [process.execPath, AGENTVPN_BIN, 'registry', '--listen', `${REGISTRY_IP}:7443`, '--db', db, '--network', NETWORK,
      '--offline-after', '15', '--metrics', REGISTRY_METRICS], { name: 'registry', cwd: REPO_ROOT });
    lab.spawn(regNs, [process.execPath, AGENTVPN_BIN, 'relay', '--listen', `${REGISTRY_IP}:7450`, '--metrics', RELAY_METRICS], { name: 'relay', cwd: REPO_ROOT });
    await waitFor(async () => (await lab.exec(regNs, ['curl', '-sf', `${url}/healthz`])).code === 0, { timeoutMs: 20_000, what: `registry at ${url}` });
    const t = await lab.run(regNs, [process.execPath, AGENTVPN_BIN, 'registry', 'token', 'create', '--db', db, '--network', NETWORK, '--json']);
    registry = { ns: regNs, url, db, network: NETWORK, token: JSON.parse(t.stdout).token as string, proc: regProc };

    for (const [i, name] of ['alpha', 'beta'].entries()) {
      const ns = await lab.addNamespace(name);
      const underlay = `192.0.2.${16 * i + 2}`;
      await lab.connect(hub, ns, { a: `192.0.2.${16 * i + 1}/28`, b: `${underlay}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', `192.0.2.${16 * i + 1}`]);
      const agent = await startLabAgent(lab, ns, name, registry, { extraArgs: ['--metrics', `${underlay}:${AGENT_METRICS_PORT}`] });
      agents.push({ agent, underlay });
    }
    await waitForFleet(agents.map((a) => a.agent));

    promDir = join(lab.dir, 'prometheus');
    mkdirSync(join(promDir, 'data'), { recursive: true });
    const target = (job: string, targets: string[]) => `  - job_name: ${job}\n    static_configs:\n      - targets: [${targets.map((x) => `'${x}'`).join(', ')}]\n`;
    writeFileSync(join(promDir, 'prometheus.yml'), 'global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n'
      + target('agents', agents.map((a) => `${a.underlay}:${AGENT_METRICS_PORT}`)) + target('registry', [REGISTRY_METRICS]) + target('relay', [RELAY_METRICS]));
    prometheus = lab.spawn(regNs, [PROMETHEUS, `--config.file=${join(promDir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(promDir, 'data')}`,
      '--web.listen-address=127.0.0.1:9090', '--log.level=warn'], { name: 'prometheus' });
    const proc = prometheus;
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`prometheus exited:\n${lab.logTail(proc)}`);
      return (await query('up == 1')).length === 4;
    }, { timeoutMs: 30_000, intervalMs: 500, what: 'prometheus scraping all four targets' });
  });

  afterAll(async () => {
    if (prometheus) await lab.kill(prometheus);
    if (promDir) rmSync(promDir, { recursive: true, force: true });
    await lab?.cleanup();
  });

  it('rx bytes per peer grow in Prometheus after traffic flows between two agents', async () => {
    const [alpha, beta] = agents.map((a) => a.agent);
    const betaIp = (await beta.json<{ ipv4: string }>(['id'])).ipv4;
    const rxQuery = `agentvpn_peer_rx_bytes_total{job="agents",instance="${agents[0].underlay}:${AGENT_METRICS_PORT}",peer="beta"}`;
    // Peers are labelled by agent name; the series exists before any traffic.
    await waitFor(async () => (await scalar(rxQuery)) !== undefined, { timeoutMs: 15_000, what: 'alpha\'s rx bytes from beta in prometheus' });
    const before = (await scalar(rxQuery))!;

    const dir = join(lab.dir, 'www');
    mkdirSync(dir, { recursive: true });
    const hash = await makeRandomFile(join(dir, 'blob.bin'), TRANSFER_MB);
    const http = await startHttpServer(lab, beta.ns, dir, betaIp);
    try {
      expect(await fetchAndHash(lab, alpha.ns, betaIp, 'blob.bin')).toBe(hash);
    } finally {
      await lab.kill(http, { graceMs: 500 });
    }
    const grown = before + TRANSFER_MB * 1024 * 1024;
    await waitFor(async () => ((await scalar(rxQuery)) ?? 0) >= grown, { timeoutMs: 15_000, intervalMs: 500, what: `rx bytes past ${grown} in prometheus` });
    const after = (await scalar(rxQuery))!;
    const rate = await scalar(`rate(${rxQuery}[5s])`);
    console.log(`prometheus: alpha's rx bytes from beta ${before} -> ${after} (+${((after - before) / 1024 / 1024).toFixed(2)} MiB for a ${TRANSFER_MB} MiB download; rate over 5 s ${Math.round(rate ?? 0)} B/s)`);
    expect(after - before).toBeGreaterThanOrEqual(TRANSFER_MB * 1024 * 1024);
    // The other side saw the same transfer as tx bytes (scraped on its own schedule, so waited
    // for), and both know how they reach each other.
    const txQuery = `agentvpn_peer_tx_bytes_total{job="agents",instance="${agents[1].underlay}:${AGENT_METRICS_PORT}",peer="alpha"}`;
    await waitFor(async () => ((await scalar(txQuery)) ?? 0) >= TRANSFER_MB * 1024 * 1024, { timeoutMs: 15_000, intervalMs: 500, what: 'beta\'s tx bytes in prometheus' });
    await waitFor(async () => (await scalar('sum(agentvpn_peer_path{job="agents"})')) === 2, { timeoutMs: 15_000, intervalMs: 500, what: 'both agents\' paths in prometheus' });
    expect(await scalar('min(agentvpn_peer_handshakes_total{job="agents"})')).toBeGreaterThanOrEqual(1);
    expect(await scalar('max(process_resident_memory_bytes{job="agents"})')).toBeGreaterThan(0);
  });

  it('the registry shows its agents, requests by route template and latency; the relay its counters', async () => {
    expect(await scalar('agentvpn_registry_agents{job="registry"}')).toBe(2);
    expect(await scalar('agentvpn_registry_agents_online{job="registry"}')).toBe(2);
    expect(await scalar('agentvpn_registry_event_subscribers{job="registry"}')).toBe(2);
    await waitFor(async () => ((await scalar('sum(agentvpn_registry_http_requests_total{route="/v1/agents/:id/heartbeat",status="200"})')) ?? 0) > 0,
      { timeoutMs: 20_000, intervalMs: 500, what: 'heartbeats counted in prometheus' });
    const joins = await scalar('sum(agentvpn_registry_http_requests_total{route="/v1/join",status="200"})');
    const p99 = await scalar('histogram_quantile(0.99, sum by (le) (rate(agentvpn_registry_http_request_duration_seconds_bucket[1m])))');
    const routes = (await query('count by (route) (agentvpn_registry_http_requests_total)')).map((s) => s.metric.route);
    console.log(`prometheus: registry answered ${joins} joins; routes seen ${routes.join(' ')}; p99 latency ${p99 === undefined || Number.isNaN(p99) ? 'n/a' : `${(p99 * 1000).toFixed(1)} ms`}`);
    expect(joins).toBe(2);
    expect(routes).not.toContain(undefined);
    // The registry's built-in relay and the standalone relay are both scraped, drops by reason included.
    expect(await scalar('count(agentvpn_relay_drops_total{job="registry"})')).toBeGreaterThan(10);
    expect(await scalar('agentvpn_relay_forwarded_packets_total{job="relay"}')).toBe(0);
    expect(await scalar('sum(agentvpn_relay_sessions{job="relay"})')).toBe(0);
  });

  it('a static daemon: metrics on loopback for a port alone, peers by key; a metrics port that is taken stops the daemon', async () => {
    const ns = agents[1].agent.ns;
    const [self, peer] = await Promise.all([wgKeyPair(), wgKeyPair()]);
    const cfg = { privateKey: self.privateKey, listenPort: 51830, addresses: ['100.99.0.1/24'], peers: [{ publicKey: peer.publicKey, allowedIps: ['100.99.0.2/32'] }] };
    const daemon = await startAgentVpn(lab, ns, cfg, 'agentvpn1', { extraArgs: ['--metrics', '9200'] });
    try {
      const local = await lab.exec(ns, ['curl', '-sS', '--max-time', '5', 'http://127.0.0.1:9200/metrics']);
      expect(local.code).toBe(0);
      expect(local.stdout).toContain(`agentvpn_peer_rx_bytes_total{peer="${peer.publicKey}"} 0`);
      // Nothing listens on the namespace's own address: the registry's namespace cannot reach it.
      const remote = await lab.exec(regNs, ['curl', '-sS', '--max-time', '5', `http://${agents[1].underlay}:9200/metrics`]);
      expect(remote.code).not.toBe(0);

      // A second daemon asking for the same metrics port fails, and takes down what it had set up
      // (exiting alone would drop the interface and the firewall table, but leave its control socket behind).
      const file = join(lab.dir, 'second.conf');
      writeFileSync(file, renderWgQuickConfig({ ...cfg, listenPort: 51831, addresses: ['100.98.0.1/24'] }), { mode: 0o600 });
      const runDir = join(lab.dir, 'run-second');
      mkdirSync(runDir, { recursive: true });
      const second = await lab.exec(ns, [process.execPath, AGENTVPN_BIN, 'up', '--foreground', '--config', file, '--interface', 'agentvpn2', '--metrics', '9200', '--json'],
        { env: { ...process.env, AGENTVPN_RUN_DIR: runDir }, timeoutMs: 30_000 });
      console.log(`second daemon on a taken metrics port: exit ${second.code}, ${second.stdout.trim()}`);
      expect(second.code).not.toBe(0);
      expect(second.stdout).toContain('METRICS_LISTEN_FAILED');
      expect((await lab.exec(ns, ['ip', 'link', 'show', 'agentvpn2'])).code).not.toBe(0);
      const tables = (await lab.run(ns, ['nft', 'list', 'tables'])).stdout;
      expect(tables).toContain('agentvpn_agentvpn1');
      expect(tables).not.toContain('agentvpn_agentvpn2');
      // No control socket (nor UAPI socket) left behind; the directories they lived in may stay.
      const left = readdirSync(runDir, { recursive: true, withFileTypes: true }).filter((e) => !e.isDirectory()).map((e) => e.name);
      expect(left).toEqual([]);
    } finally {
      await daemon.stop();
    }
  });
});
