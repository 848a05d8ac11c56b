import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgentVpn, type AgentVpnProcess } from '../../src/lab/index.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { expectFullConnectivity, labReady } from './checks.js';
import { makePair, type Pair } from './pair.js';

async function status(d: AgentVpnProcess): Promise<DeviceStatus> {
  const r = await d.cli(['status', '--json'], { check: true });
  return JSON.parse(r.stdout) as DeviceStatus;
}

describe.runIf(labReady(['ip', 'curl', 'python3']))('agentvpn <-> agentvpn in two namespaces', () => {
  let pair: Pair;
  let a: AgentVpnProcess;
  let b: AgentVpnProcess;

  beforeAll(async () => {
    pair = await makePair();
    a = await startAgentVpn(pair.lab, pair.endpoints.nsA, pair.configA({ withEndpoint: true }), 'agentvpn0');
    b = await startAgentVpn(pair.lab, pair.endpoints.nsB, pair.configB({ withEndpoint: true }), 'agentvpn0');
  });

  afterAll(async () => {
    await pair?.lab.cleanup();
  });

  it('carries ping (v4+v6), HTTP, a 50 MB transfer and UDP both ways', async () => {
    await expectFullConnectivity(pair.lab, pair.endpoints);
  });

  it('reports peers, endpoints, handshakes and byte counts in status --json', async () => {
    const s = await status(a);
    expect(s.interface).toBe('agentvpn0');
    expect(s.publicKey).toBe(pair.keyA.publicKey);
    expect(s.listenPort).toBe(51820);
    expect(s.peers).toHaveLength(1);
    const p = s.peers[0];
    expect(p.publicKey).toBe(pair.keyB.publicKey);
    expect(p.endpoint).toBe(`${pair.underlayB}:51821`);
    expect(p.latestHandshake).toBeGreaterThan(Date.now() - 300_000);
    expect(p.rxBytes).toBeGreaterThan(50 * 1024 * 1024);
    expect(p.allowedIps.sort()).toEqual(['100.64.0.2/32', 'fd00:a::2/128']);
    const human = await a.cli(['status'], { check: true });
    expect(human.stdout).toContain(pair.keyB.publicKey);
  });

  it('`down` removes the interface and stops the daemon', async () => {
    const r = await b.cli(['down'], { check: true });
    expect(r.stdout).toContain('agentvpn0 is down');
    const exit = await b.process.exited;
    expect(exit.code).toBe(0);
    const link = await pair.lab.exec(pair.endpoints.nsB, ['ip', 'link', 'show', 'agentvpn0']);
    expect(link.code).not.toBe(0);
    const st = await b.cli(['status', '--json']);
    expect(st.code).not.toBe(0);
    expect(JSON.parse(st.stdout).code).toBe('DAEMON_NOT_RUNNING');
  });
});
