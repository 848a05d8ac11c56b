import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENTVPN_BIN, Lab, REPO_ROOT, waitFor, type LabProcess } from '../../src/lab/index.js';
import type { PeerInfo } from '../../src/daemon/fleet.js';
import { labReady, startHttpServer } from './checks.js';

/**
 * A registry on a "public" network and three agents on their own subnets, all joined by a
 * router: agents find each other through the registry and talk by overlay IPv4, IPv6 and name.
 */
const NETWORK = 'lab';
const REGISTRY = '203.0.113.10';
const REGISTRY_URL = `http://${REGISTRY}:7443`;

interface Agent {
  name: string;
  ns: string;
  stateDir: string;
  runDir: string;
  caps: string[];
  underlay: string;
  proc?: LabProcess;
}

describe.runIf(labReady(['ip', 'curl', 'python3']))('fleet: registry, permanent addresses, names and discovery', () => {
  let lab: Lab;
  let registry: LabProcess;
  let regNs: string;
  let token: string;
  const agents: Agent[] = [];
  const dbFile = () => join(lab.dir, 'registry.db');

  const cli = (a: Agent, args: string[]) =>
    lab.run(a.ns, [process.execPath, AGENTVPN_BIN, ...args], { env: { ...process.env, AGENTVPN_RUN_DIR: a.runDir }, timeoutMs: 20_000 });

  async function startRegistry(): Promise<void> {
    registry = lab.spawn(regNs, [process.execPath, AGENTVPN_BIN, 'registry', '--listen', `${REGISTRY}:7443`, '--db', dbFile(), '--network', NETWORK, '--offline-after', '6'], { name: 'registry', cwd: REPO_ROOT });
    await waitFor(async () => (await lab.exec(regNs, ['curl', '-sf', `${REGISTRY_URL}/healthz`])).code === 0, { timeoutMs: 15_000, what: 'registry healthz' });
  }

  async function startAgent(a: Agent): Promise<void> {
    const caps = a.caps.flatMap((c) => ['--cap', c]);
    a.proc = lab.spawn(a.ns, [process.execPath, AGENTVPN_BIN, 'up', '--foreground', '--registry', REGISTRY_URL, '--token', token,
      '--name', a.name, '--network', NETWORK, '--state-dir', a.stateDir, '--listen-port', '51820', ...caps],
    { name: `agent-${a.name}`, env: { ...process.env, AGENTVPN_RUN_DIR: a.runDir }, cwd: REPO_ROOT });
    await waitFor(async () => lab.interfaceUp(a.ns, 'agentvpn0'), { timeoutMs: 20_000, what: `agent ${a.name} up` });
  }

  async function peersOf(a: Agent, cap?: string): Promise<PeerInfo[]> {
    const r = await cli(a, ['peers', '--json', ...(cap ? ['--cap', cap] : [])]);
    return JSON.parse(r.stdout).peers as PeerInfo[];
  }

  async function idOf(a: Agent): Promise<{ id: string; ipv4: string; ipv6: string }> {
    return JSON.parse((await cli(a, ['id', '--json'])).stdout);
  }

  async function waitForFleet(): Promise<void> {
    for (const a of agents) {
      await waitFor(async () => (await peersOf(a)).filter((p) => p.online).length === agents.length - 1, { timeoutMs: 20_000, what: `${a.name} sees the fleet` });
    }
  }

  beforeAll(async () => {
    lab = new Lab();
    const hub = await lab.addRouter('hub');
    regNs = await lab.addNamespace('reg');
    await lab.connect(hub, regNs, { a: '203.0.113.1/24', b: `${REGISTRY}/24`, ifB: 'eth0' });
    await lab.ip(regNs, ['route', 'add', 'default', 'via', '203.0.113.1']);
    const specs = [
      { name: 'planner', caps: ['llm.plan'] },
      { name: 'worker', caps: ['llm.inference@1;model=llama3', 'gpu'] },
      { name: 'worker2', caps: ['llm.inference@2;model=mistral'] },
    ];
    for (const [i, s] of specs.entries()) {
      const ns = await lab.addNamespace(s.name);
      const hubAddr = `192.0.2.${16 * i + 1}`;
      const underlay = `192.0.2.${16 * i + 2}`;
      await lab.connect(hub, ns, { a: `${hubAddr}/28`, b: `${underlay}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', hubAddr]);
      const stateDir = join(lab.dir, `state-${s.name}`);
      const runDir = join(lab.dir, `run-${s.name}`);
      mkdirSync(runDir, { recursive: true });
      agents.push({ ...s, ns, stateDir, runDir, underlay });
    }
    await startRegistry();
    const t = await lab.run(regNs, [process.execPath, AGENTVPN_BIN, 'registry', 'token', 'create', '--db', dbFile(), '--network', NETWORK, '--json']);
    token = JSON.parse(t.stdout).token;
    for (const a of agents) await startAgent(a);
    // Each namespace resolves names with its own agent's DNS responder (ip netns exec bind-mounts this file).
    for (const a of agents) {
      const { ipv4 } = await idOf(a);
      mkdirSync(`/etc/netns/${a.ns}`, { recursive: true });
      writeFileSync(`/etc/netns/${a.ns}/resolv.conf`, `nameserver ${ipv4}\n`);
    }
    await waitForFleet();
  });

  afterAll(async () => {
    for (const a of agents) rmSync(`/etc/netns/${a.ns}`, { recursive: true, force: true });
    await lab?.cleanup();
  });

  it('every agent reaches the others by overlay IPv4, IPv6 and name', async () => {
    for (const target of agents) {
      const dir = join(lab.dir, `www-${target.name}`);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'who'), `${target.name}\n`);
      const { ipv4, ipv6 } = await idOf(target);
      const h4 = await startHttpServer(lab, target.ns, dir, ipv4, 8080);
      const h6 = await startHttpServer(lab, target.ns, dir, ipv6, 8086);
      try {
        for (const from of agents.filter((x) => x !== target)) {
          for (const url of [`http://${ipv4}:8080/who`, `http://[${ipv6}]:8086/who`, `http://${target.name}.${NETWORK}:8080/who`]) {
            const r = await lab.run(from.ns, ['curl', '-sS', '--fail', '--max-time', '10', url]);
            expect(r.stdout, `${from.name} -> ${url}`).toBe(`${target.name}\n`);
          }
        }
      } finally {
        await lab.kill(h4);
        await lab.kill(h6);
      }
      const resolved = JSON.parse((await cli(agents[0], ['resolve', `${target.name}.${NETWORK}`, '--json'])).stdout);
      expect(resolved.ipv4).toBe(ipv4);
    }
  });

  it('discovery by capability returns exactly the matching agents', async () => {
    const names = async (cap: string) => (await peersOf(agents[0], cap)).map((p) => p.name).sort();
    expect(await names('llm.inference')).toEqual(['worker', 'worker2']);
    expect(await names('llm.inference@1')).toEqual(['worker']);
    expect(await names('llm.inference;model=mistral')).toEqual(['worker2']);
    expect(await names('llm.infer')).toEqual([]);
    expect(await names('gpu')).toEqual(['worker']);
    // The registry's HTTP API answers the same question.
    const r = await lab.run(regNs, ['curl', '-sS', '--fail', '-H', `Authorization: Bearer ${token}`,
      `${REGISTRY_URL}/v1/agents?network=${NETWORK}&cap=${encodeURIComponent('llm.inference@2')}`]);
    expect(JSON.parse(r.stdout).agents.map((a: { record: { name: string } }) => a.record.name)).toEqual(['worker2']);
  });

  it('an agent restarted at a new underlay address keeps its overlay addresses and peers reconnect', async () => {
    const a = agents[2];
    const before = await idOf(a);
    await lab.kill(a.proc!);
    await lab.run(a.ns, ['ip', 'addr', 'del', `${a.underlay}/28`, 'dev', 'eth0']);
    await lab.run(a.ns, ['ip', 'addr', 'add', '192.0.2.40/28', 'dev', 'eth0']);
    await lab.run(a.ns, ['ip', 'route', 'replace', 'default', 'via', '192.0.2.33']); // went with the old address
    a.underlay = '192.0.2.40';
    await startAgent(a);
    const after = await idOf(a);
    expect(after).toMatchObject({ id: before.id, ipv4: before.ipv4, ipv6: before.ipv6 });
    await waitFor(async () => (await lab.exec(agents[0].ns, ['ping', '-c', '1', '-W', '1', after.ipv4])).code === 0, { timeoutMs: 20_000, what: 'planner reaches the moved agent' });
    await waitFor(async () => (await lab.exec(a.ns, ['ping', '-c', '1', '-W', '1', `${agents[1].name}.${NETWORK}`])).code === 0, { timeoutMs: 20_000, what: 'moved agent reaches worker by name' });
  });

  it('tunnels keep working while the registry is down, and nothing is lost when it returns', async () => {
    const countBefore = JSON.parse((await lab.run(regNs, ['curl', '-sS', '-H', `Authorization: Bearer ${token}`, `${REGISTRY_URL}/v1/agents?network=${NETWORK}`])).stdout).agents.length;
    await lab.kill(registry);
    const target = await idOf(agents[1]);
    for (let i = 0; i < 3; i++) {
      const r = await lab.exec(agents[0].ns, ['ping', '-c', '3', '-i', '0.3', '-W', '2', target.ipv4]);
      expect(r.code, r.stdout).toBe(0);
    }
    await startRegistry();
    const after = JSON.parse((await lab.run(regNs, ['curl', '-sS', '-H', `Authorization: Bearer ${token}`, `${REGISTRY_URL}/v1/agents?network=${NETWORK}`])).stdout).agents;
    expect(after.length).toBe(countBefore);
    await waitForFleet();
  });
});
