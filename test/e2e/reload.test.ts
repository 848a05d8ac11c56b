import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HUB_REGISTRY_IP, Lab, startLabAgent, startLabRegistry, waitFor, waitForFleet, type LabAgent } from '../../src/lab/index.js';
import type { PeerInfo } from '../../src/daemon/fleet.js';
import type { ReloadReport } from '../../src/daemon/reload.js';
import { fetchAndHash, labReady, makeRandomFile, startHttpServer } from './checks.js';

/**
 * SIGHUP and `agentvpn reload`: the worker's capabilities change in its config file, the daemon
 * re-reads it, and the planner sees the new capabilities, while a TCP transfer between the two
 * runs through the reload and arrives intact. Settings that need a restart are reported, not
 * applied; a file that no longer parses changes nothing.
 */

const TRANSFER_MB = 20;
/** 2 MB/s: the 20 MB transfer lasts several seconds, so the reload (1 s in) lands in the middle of it. */
const RATE = '2M';

describe.runIf(labReady(['ip', 'curl', 'python3']))('reload: live capability change during a transfer', () => {
  let lab: Lab;
  let planner: LabAgent;
  let worker: LabAgent;
  let configFile: string;
  const writeConfig = (settings: Record<string, unknown>) => writeFileSync(configFile, JSON.stringify(settings), { mode: 0o600 });

  const capsSeenByPlanner = async () => {
    const { peers } = await planner.json<{ peers: PeerInfo[] }>(['peers']);
    return peers.find((p) => p.name === 'worker')?.capabilities ?? null;
  };

  beforeAll(async () => {
    lab = new Lab();
    const hub = await lab.addRouter('hub');
    const regNs = await lab.addNamespace('reg');
    await lab.connect(hub, regNs, { a: '203.0.113.1/24', b: `${HUB_REGISTRY_IP}/24`, ifB: 'eth0' });
    await lab.ip(regNs, ['route', 'add', 'default', 'via', '203.0.113.1']);
    const registry = await startLabRegistry(lab, regNs, HUB_REGISTRY_IP);
    const nss: string[] = [];
    for (const [i, name] of ['planner', 'worker'].entries()) {
      const ns = await lab.addNamespace(name);
      await lab.connect(hub, ns, { a: `192.0.2.${16 * i + 1}/28`, b: `192.0.2.${16 * i + 2}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', `192.0.2.${16 * i + 1}`]);
      nss.push(ns);
    }
    const etc = join(lab.dir, 'etc-agentvpn');
    mkdirSync(etc, { recursive: true, mode: 0o700 });
    configFile = join(etc, 'agentvpn0.json');
    writeConfig({ cap: ['llm.inference@1;model=llama3'], 'log-level': 'info' });
    planner = await startLabAgent(lab, nss[0], 'planner', registry, { caps: ['llm.plan'] });
    worker = await startLabAgent(lab, nss[1], 'worker', registry, { extraArgs: ['--config-file', configFile] });
    await waitForFleet([planner, worker]);
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('SIGHUP applies new capabilities that the other agent sees, while a transfer completes intact', async () => {
    expect(await capsSeenByPlanner()).toEqual(['llm.inference@1;model=llama3']);
    const { ipv4 } = await worker.json<{ ipv4: string }>(['id']);
    const dir = join(lab.dir, 'www');
    mkdirSync(dir, { recursive: true });
    const sent = await makeRandomFile(join(dir, 'big.bin'), TRANSFER_MB);
    await startHttpServer(lab, worker.ns, dir, ipv4, 8080);
    const pid = worker.proc!.pid;

    const started = Date.now();
    const transfer = fetchAndHash(lab, planner.ns, ipv4, 'big.bin', 8080, ['--limit-rate', RATE]);
    await new Promise((r) => setTimeout(r, 1000));
    writeConfig({ cap: ['llm.inference@2;model=mistral', 'gpu'], 'log-level': 'info' });
    worker.proc!.kill('SIGHUP');
    const reloadedAt = Date.now();
    await waitFor(async () => JSON.stringify(await capsSeenByPlanner()) === JSON.stringify(['llm.inference@2;model=mistral', 'gpu']),
      { timeoutMs: 15_000, intervalMs: 200, what: 'planner sees the worker\'s new capabilities' });
    const seenAfterMs = Date.now() - reloadedAt;
    const received = await transfer;
    const transferS = (Date.now() - started) / 1000;
    console.log(`capabilities seen by the other agent ${seenAfterMs} ms after SIGHUP; ${TRANSFER_MB} MB transfer over ${transferS.toFixed(1)} s, sha256 ${received === sent ? 'matches' : 'DIFFERS'}`);
    expect(received).toBe(sent);
    expect(worker.proc!.pid).toBe(pid);
    expect(worker.proc!.exitCode).toBeNull();
    // The reload landed while the transfer ran.
    expect(reloadedAt - started).toBeLessThan(transferS * 1000);
    // Discovery by capability follows.
    const { peers } = await planner.json<{ peers: PeerInfo[] }>(['peers', '--cap', 'gpu']);
    expect(peers.map((p) => p.name)).toEqual(['worker']);
  });

  it('`agentvpn reload` reports what needs a restart and keeps it; a broken file changes nothing', async () => {
    writeConfig({ cap: ['llm.inference@2;model=mistral', 'gpu'], 'log-level': 'debug', mtu: 1300 });
    const report = await worker.json<ReloadReport>(['reload']);
    console.log(`reload report: ${report.message}`);
    expect(report.applied).toEqual(['log-level']);
    expect(report.needsRestart).toEqual(['mtu']);
    expect(report.message).toContain('needs a restart');
    const link = await lab.exec(worker.ns, ['ip', '-j', 'link', 'show', 'dev', 'agentvpn0']);
    expect(JSON.parse(link.stdout)[0].mtu).toBe(1380); // still the running value

    writeConfig({ cap: ['other'], capabilities: ['typo'] } as Record<string, unknown>);
    const bad = await worker.cli(['reload', '--json'], { check: false });
    expect(bad.code).not.toBe(0);
    const err = JSON.parse(bad.stdout) as { code: string; message: string; hint: string };
    expect(err.code).toBe('CONFIG_UNKNOWN_KEY');
    expect(err.message).toContain('"capabilities"');
    expect(err.message).toContain('nothing changed');
    await new Promise((r) => setTimeout(r, 1500));
    expect(await capsSeenByPlanner()).toEqual(['llm.inference@2;model=mistral', 'gpu']);
    expect(worker.proc!.exitCode).toBeNull();
  });
});
