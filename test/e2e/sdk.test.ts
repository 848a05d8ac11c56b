import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENTVPN_BIN, Lab, LabAgent, runCommand, startLabAgent, startLabRegistry, waitFor, waitForFleet, type LabProcess, type LabRegistry } from '../../src/lab/index.js';
import { connect, type AgentVpn, type DaemonEvent, type DeviceStatus } from '../../src/index.js';
import { labReady } from './checks.js';

/**
 * The SDKs against real daemons: a registry and three agents behind one router. The examples
 * (TS and Python) find the `llm.inference` worker and call it over the overlay; the event
 * iterators (TS in this process, Python in the planner's namespace) see the direct path fall
 * back to the relay when the router drops the agents' UDP, come back when it heals, a peer go
 * offline when its daemon stops, and a trust alert when a new machine takes its name.
 */
const REPO = new URL('../../', import.meta.url).pathname;
const REGISTRY = '203.0.113.10';
const WORKER_CAP = 'llm.inference@1;model=echo;port=8080';

describe.runIf(labReady(['ip', 'iptables', 'python3']))('SDK against a real daemon', () => {
  let lab: Lab;
  let registry: LabRegistry;
  let hub: string;
  const agents: Record<string, LabAgent & { underlay: string }> = {};
  let vpn: AgentVpn;
  const tsEvents: DaemonEvent[] = [];
  let tsLoop: Promise<unknown>;
  let pyEvents: LabProcess;

  const env = (a: LabAgent) => ({ ...process.env, AGENTVPN_RUN_DIR: a.runDir, PYTHONPATH: join(REPO, 'sdk/python') });
  const pyLines = (): DaemonEvent[] => readFileSync(pyEvents.logFile, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as DaemonEvent);
  const seenBoth = async (what: string, match: (e: DaemonEvent) => boolean, timeoutMs: number) => {
    await waitFor(() => tsEvents.some(match), { timeoutMs, intervalMs: 250, what: `TS SDK: ${what}` });
    await waitFor(() => pyLines().some(match), { timeoutMs: 5000, intervalMs: 250, what: `Python SDK: ${what}` });
  };
  const pathToWorker = async () => (await vpn.status() as DeviceStatus).peers.find((p) => p.allowedIps.includes(`${workerIp}/32`))?.path?.kind;
  let workerIp = '';

  beforeAll(async () => {
    lab = new Lab();
    hub = await lab.addRouter('hub');
    const regNs = await lab.addNamespace('reg');
    await lab.connect(hub, regNs, { a: '203.0.113.1/24', b: `${REGISTRY}/24`, ifB: 'eth0' });
    await lab.ip(regNs, ['route', 'add', 'default', 'via', '203.0.113.1']);
    registry = await startLabRegistry(lab, regNs, REGISTRY, { offlineAfterSec: 6 });
    const specs = [{ name: 'planner', caps: [] }, { name: 'worker', caps: [WORKER_CAP] }, { name: 'spare', caps: [] }];
    for (const [i, s] of specs.entries()) {
      const ns = await lab.addNamespace(s.name);
      await lab.connect(hub, ns, { a: `192.0.2.${16 * i + 1}/28`, b: `192.0.2.${16 * i + 2}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', `192.0.2.${16 * i + 1}`]);
      agents[s.name] = Object.assign(await startLabAgent(lab, ns, s.name, registry, { caps: s.caps }), { underlay: `192.0.2.${16 * i + 2}` });
    }
    await waitForFleet(Object.values(agents), 30_000);
    workerIp = (await agents.worker.json<{ ipv4: string }>(['id'])).ipv4;
    // The TS examples, compiled against the package (`import { connect } from 'agentvpn'`).
    await runCommand(['npx', 'tsc', '-p', 'examples/tsconfig.json'], { cwd: REPO, check: true, timeoutMs: 60_000 });
    const worker = lab.spawn(agents.worker.ns, [process.execPath, join(REPO, 'examples/dist/inference-worker.js'), '8080'], { name: 'inference-worker', env: env(agents.worker), cwd: REPO });
    await waitFor(() => readFileSync(worker.logFile, 'utf8').includes('llm.inference on'), { timeoutMs: 10_000, what: 'inference worker listening' });
  }, 120_000);

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('the TS example finds the llm.inference worker and calls it; the worker names the caller by whois', async () => {
    const r = await lab.run(agents.planner.ns, [process.execPath, join(REPO, 'examples/dist/find-inference.js'), 'hi from ts'], { env: env(agents.planner), cwd: REPO });
    console.log(`TS example: ${r.stdout.trim()}`);
    expect(JSON.parse(r.stdout.slice(r.stdout.indexOf('{')))).toEqual({ model: 'echo', servedBy: 'worker', caller: 'planner', completion: 'echo: hi from ts' });
    expect(r.stdout).toContain(`worker (${workerIp}): 200`);
  });

  it('the Python example does the same', async () => {
    const r = await lab.run(agents.planner.ns, ['python3', join(REPO, 'examples/find_inference.py'), 'hi from python'], { env: env(agents.planner), cwd: REPO });
    console.log(`Python example: ${r.stdout.trim()}`);
    expect(JSON.parse(r.stdout.slice(r.stdout.indexOf('{')))).toEqual({ model: 'echo', servedBy: 'worker', caller: 'planner', completion: 'echo: hi from python' });
  });

  it('names, ping and whoami answer in both languages', async () => {
    const planner = await connect({ socketPath: join(agents.planner.runDir, 'agentvpn0.sock') });
    expect((await planner.resolve('worker')).ipv4).toBe(workerIp);
    expect((await planner.whoami()).name).toBe('planner');
    const pong = await planner.ping('worker', { count: 2 });
    expect(pong.replies).toHaveLength(2);
    expect(pong.replies.every((r) => 'rttMs' in r)).toBe(true);
    const py = await lab.run(agents.planner.ns, ['python3', '-c',
      'import agentvpn, json; vpn = agentvpn.connect(); print(json.dumps([vpn.resolve("worker")["ipv4"], len(vpn.ping("worker", 2)["replies"]), vpn.whoami()["name"]]))'],
    { env: env(agents.planner) });
    expect(JSON.parse(py.stdout)).toEqual([workerIp, 2, 'planner']);
  });

  it('the event iterators report a path falling back to the relay and back to direct, a peer going offline, a trust alert', async () => {
    vpn = await connect({ socketPath: join(agents.planner.runDir, 'agentvpn0.sock') });
    const stream = vpn.events();
    await stream.opened;
    tsLoop = (async () => {
      for await (const ev of stream) {
        tsEvents.push(ev);
        if (ev.type === 'trust.alert' && ev.name === 'spare') break; // leaving the loop closes the stream
      }
      return 'left the loop';
    })().catch((e: unknown) => e); // a failed test stops the daemons under the loop: no unhandled rejection
    pyEvents = lab.spawn(agents.planner.ns, ['python3', join(REPO, 'test/e2e/fixtures/sdk-events.py'), join(REPO, 'sdk/python')], { name: 'py-events', env: env(agents.planner) });
    await waitFor(() => readFileSync(pyEvents.logFile, 'utf8').includes('"subscribed"'), { timeoutMs: 10_000, what: 'Python subscribed' });
    await waitFor(async () => (await pathToWorker()) === 'direct', { timeoutMs: 20_000, intervalMs: 250, what: 'planner direct to worker' });

    // The router drops UDP between planner and worker: only the relay (at the registry) is left.
    const rules = [[agents.planner.underlay, agents.worker.underlay], [agents.worker.underlay, agents.planner.underlay]]
      .map(([s, d]) => ['FORWARD', '-p', 'udp', '-s', s, '-d', d, '-j', 'DROP']);
    for (const r of rules) await lab.iptables(hub, ['-I', ...r]);
    const cut = Date.now();
    const toRelay = (e: DaemonEvent) => e.type === 'path.changed' && e.name === 'worker' && e.kind === 'relay';
    await seenBoth('path to worker changed to relay', toRelay, 20_000);
    const relayed = tsEvents.find(toRelay)!;
    console.log(`path event after ${((Date.now() - cut) / 1000).toFixed(1)} s: ${JSON.stringify(relayed)}`);
    // The relay as the path layer names it (what `status` shows), not the direct address that died.
    const now = (await vpn.status() as DeviceStatus).peers.find((p) => p.allowedIps.includes(`${workerIp}/32`))!.path!;
    expect(now.kind).toBe('relay');
    expect(relayed).toMatchObject({ ipv4: workerIp, endpoint: now.endpoint });
    expect(relayed.endpoint).not.toContain(agents.worker.underlay);
    const { eventStreams } = await vpn.status() as DeviceStatus & { eventStreams: { open: number; eventsSent: number; eventsDropped: number } };
    console.log(`planner's event streams: ${JSON.stringify(eventStreams)}`);
    expect(eventStreams).toMatchObject({ open: 2, eventsDropped: 0 });

    for (const r of rules) await lab.iptables(hub, ['-D', ...r]);
    const toDirect = (e: DaemonEvent) => e.type === 'path.changed' && e.name === 'worker' && e.kind === 'direct' && e.at > relayed.at;
    await seenBoth('path to worker back to direct', toDirect, 30_000);
    expect(tsEvents.find(toDirect)).toMatchObject({ endpoint: `${agents.worker.underlay}:51820`, rttMs: expect.any(Number) });

    // spare stops (its daemon leaves the network): the registry says offline, the planner tells us.
    await lab.kill(agents.spare.proc!);
    const spareOffline = (e: DaemonEvent) => e.type === 'peer.offline' && e.name === 'spare';
    await seenBoth('spare offline', spareOffline, 20_000);

    // A new machine takes the freed name spare with another key: the planner's trust store (TOFU) refuses it.
    await lab.run(registry.ns, [process.execPath, AGENTVPN_BIN, 'registry', 'agent', 'remove', 'spare', '--db', registry.db, '--network', registry.network]);
    const old = agents.spare;
    await startLabAgent(lab, old.ns, 'spare', registry, { agent: new LabAgent(lab, 'spare', old.ns, join(lab.dir, 'state-spare-new'), join(lab.dir, 'run-spare-new')) });
    const alert = (e: DaemonEvent) => e.type === 'trust.alert' && e.name === 'spare';
    await seenBoth('trust alert for spare', alert, 20_000);
    expect(tsEvents.find(alert)).toMatchObject({ state: 'changed', alert: expect.stringContaining('spare') });
    expect(await tsLoop).toBe('left the loop');
    console.log(`events seen: TS ${tsEvents.map((e) => e.type).join(', ')}; Python ${pyLines().map((e) => e.type).join(', ')}`);
    await lab.kill(pyEvents);
  }, 120_000);
});
