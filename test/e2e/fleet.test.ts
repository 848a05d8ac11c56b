import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, startLabAgent, startLabRegistry, waitFor, waitForFleet, type LabAgent, type LabRegistry } from '../../src/lab/index.js';
import type { PeerInfo } from '../../src/daemon/fleet.js';
import { labReady, startHttpServer } from './checks.js';

const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;
const REPO_ROOT = new URL('../../', import.meta.url).pathname.replace(/\/$/, '');

/**
 * A registry on a "public" network and three agents on their own subnets, all joined by a
 * router: agents find each other through the registry and talk by overlay IPv4, IPv6 and name.
 */
const NETWORK = 'lab';
const REGISTRY = '203.0.113.10';
const REGISTRY_URL = `http://${REGISTRY}:7443`;

type Agent = LabAgent & { caps: string[]; underlay: string };

describe.runIf(labReady(['ip', 'curl', 'python3']))('fleet: registry, permanent addresses, names and discovery', () => {
  let lab: Lab;
  let registry: LabRegistry;
  let regNs: string;
  let token: string;
  const agents: Agent[] = [];

  const startRegistry = async () => {
    registry = await startLabRegistry(lab, regNs, REGISTRY, { network: NETWORK, offlineAfterSec: 6 });
  };
  const startAgent = (a: Agent) => startLabAgent(lab, a.ns, a.name, registry, { caps: a.caps, agent: a });

  async function peersOf(a: Agent, cap?: string): Promise<PeerInfo[]> {
    return (await a.json<{ peers: PeerInfo[] }>(['peers', ...(cap ? ['--cap', cap] : [])])).peers;
  }

  const idOf = (a: Agent) => a.json<{ id: string; ipv4: string; ipv6: string }>(['id']);

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
    await startRegistry();
    token = registry.token;
    for (const [i, s] of specs.entries()) {
      const ns = await lab.addNamespace(s.name);
      const hubAddr = `192.0.2.${16 * i + 1}`;
      const underlay = `192.0.2.${16 * i + 2}`;
      await lab.connect(hub, ns, { a: `${hubAddr}/28`, b: `${underlay}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', hubAddr]);
      const agent = await startLabAgent(lab, ns, s.name, registry, { caps: s.caps });
      agents.push(Object.assign(agent, { caps: s.caps, underlay }));
    }
    // Each namespace resolves names with its own agent's DNS responder (ip netns exec bind-mounts this file).
    for (const a of agents) {
      const { ipv4 } = await idOf(a);
      mkdirSync(`/etc/netns/${a.ns}`, { recursive: true });
      writeFileSync(`/etc/netns/${a.ns}/resolv.conf`, `nameserver ${ipv4}\n`);
    }
    await waitForFleet(agents, 20_000);
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
      const resolved = await agents[0].json<{ ipv4: string }>(['resolve', `${target.name}.${NETWORK}`]);
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

  it('whois: a server on worker names the agent behind each request (planner, with its capabilities)', async () => {
    const [planner, worker] = agents;
    const { ipv4 } = await idOf(worker);
    const server = lab.spawn(worker.ns, [process.execPath, join(FIXTURES, 'whois-server.mjs'), REPO_ROOT, ipv4, '8090'],
      { name: 'whois-server', env: { ...process.env, AGENTVPN_RUN_DIR: worker.runDir } });
    try {
      await waitFor(async () => (await lab.exec(planner.ns, ['curl', '-sS', '--max-time', '2', `http://${ipv4}:8090/`])).code === 0, { timeoutMs: 10_000, what: 'whois server up' });
      const r = await lab.run(planner.ns, ['curl', '-sS', '--fail', '--max-time', '5', `http://${ipv4}:8090/`]);
      const who = JSON.parse(r.stdout);
      expect(who).toMatchObject({ name: 'planner', id: (await idOf(planner)).id, capabilities: ['llm.plan'], online: true });
      expect(who.port).toBeGreaterThan(0);
      // An address no admitted agent holds is not named.
      const bad = await worker.cli(['whois', '100.64.255.254', '--json'], { check: false });
      expect(bad.code).not.toBe(0);
      expect(JSON.parse(bad.stdout).code).toBe('NOT_AN_AGENT');
    } finally {
      await lab.kill(server);
    }
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
    await lab.kill(registry.proc);
    const target = await idOf(agents[1]);
    for (let i = 0; i < 3; i++) {
      const r = await lab.exec(agents[0].ns, ['ping', '-c', '3', '-i', '0.3', '-W', '2', target.ipv4]);
      expect(r.code, r.stdout).toBe(0);
    }
    await startRegistry();
    const after = JSON.parse((await lab.run(regNs, ['curl', '-sS', '-H', `Authorization: Bearer ${token}`, `${REGISTRY_URL}/v1/agents?network=${NETWORK}`])).stdout).agents;
    expect(after.length).toBe(countBefore);
    await waitForFleet(agents, 20_000);
  });
});
