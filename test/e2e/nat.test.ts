import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Lab, buildNatWorld, findAgent, sleep, startLabAgent, startLabRegistry, startMiniupnpd, waitFor, waitForFleet,
  type LabAgent, type LabRegistry, type NatKind, type NatWorld,
} from '../../src/lab/index.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { fetchAndHash, labReady, makeRandomFile, sshFixture, startHttpServer, type SshFixture } from './checks.js';

/**
 * The NAT grid: agents behind every kind of NAT the lab builds, each pair checked for the
 * path it ends up on and for real traffic (HTTP, ssh, a 20 MB transfer).
 *
 * Expected path for a pair: relayed when either side cannot send UDP out (udp-blocked), or
 * when both sides' mappings vary by destination (symmetric). When one side is symmetric and the
 * other filters by address+port (port-restricted, double), disco alone cannot learn a port the
 * other's NAT will let in; birthday probing usually finds one within seconds ('birthday': direct
 * or relay is accepted here, its success rate is measured by hard-nat.test.ts). Everything else ends up direct: two endpoint-independent mappings punch through each
 * other's filters with simultaneous pings; a symmetric side reaches a full-cone (eim) side
 * because any public host may send to the cone's mapping, and the cone answers the port the
 * symmetric NAT opened towards it; agents behind the same NAT meet on their LAN addresses.
 */
const SITES: { name: string; kind: NatKind; agents: string[] }[] = [
  { name: 'cone', kind: 'eim', agents: ['cone'] },
  { name: 'home', kind: 'port-restricted', agents: ['alice', 'bob'] },
  { name: 'cafe', kind: 'symmetric', agents: ['carol'] },
  { name: 'hotel', kind: 'symmetric', agents: ['dave'] },
  { name: 'cgnat', kind: 'double', agents: ['erin'] },
  { name: 'corp', kind: 'udp-blocked', agents: ['frank'] },
];

function kindOf(agent: string): NatKind {
  return SITES.find((s) => s.agents.includes(agent))!.kind;
}

function siteOf(agent: string): string {
  return SITES.find((s) => s.agents.includes(agent))!.name;
}

export function expectedPath(a: string, b: string): 'direct' | 'relay' | 'birthday' {
  if (siteOf(a) === siteOf(b)) return 'direct';
  const [ka, kb] = [kindOf(a), kindOf(b)];
  if (ka === 'udp-blocked' || kb === 'udp-blocked') return 'relay';
  if (ka === 'symmetric' && kb === 'symmetric') return 'relay';
  const filtersStrictly = (k: NatKind) => k === 'port-restricted' || k === 'double';
  if ((ka === 'symmetric' && filtersStrictly(kb)) || (kb === 'symmetric' && filtersStrictly(ka))) return 'birthday';
  return 'direct';
}

describe.runIf(labReady(['ip', 'iptables', 'curl', 'python3', 'sshd', 'ssh']))('NAT traversal grid', () => {
  let lab: Lab;
  let world: NatWorld;
  let registry: LabRegistry;
  let ssh: SshFixture;
  const agents = new Map<string, LabAgent>();
  const overlay = new Map<string, string>();
  let bigHash = '';

  beforeAll(async () => {
    lab = new Lab();
    world = await buildNatWorld(lab, { sites: SITES });
    registry = await startLabRegistry(lab, world.registryNs, world.registryIp);
    for (const site of SITES) {
      for (const name of site.agents) agents.set(name, await startLabAgent(lab, findAgent(world, name).ns, name, registry));
    }
    await waitForFleet([...agents.values()], 45_000);
    ssh = sshFixture(lab);
    const www = join(lab.dir, 'www');
    mkdirSync(www, { recursive: true });
    writeFileSync(join(www, 'hello.txt'), 'hello through the NAT\n');
    bigHash = await makeRandomFile(join(www, 'big.bin'), 20);
    for (const [name, agent] of agents) {
      const id = await agent.json<{ ipv4: string }>(['id']);
      overlay.set(name, id.ipv4);
      await startHttpServer(lab, agent.ns, www, id.ipv4, 8080);
      await ssh.start(agent.ns, id.ipv4);
    }
  }, 240_000);

  afterAll(async () => {
    await lab?.cleanup();
  });

  const names = SITES.flatMap((s) => s.agents);
  const pairs = names.flatMap((a, i) => names.slice(i + 1).map((b) => [a, b] as const));

  for (const [a, b] of pairs) {
    it(`${a} (${kindOf(a)}) <-> ${b} (${kindOf(b)}): ${expectedPath(a, b)}, HTTP, ssh, 20 MB`, async () => {
      const from = agents.get(a)!;
      const to = agents.get(b)!;
      const target = overlay.get(b)!;
      // Traffic first (it goes through the relay at once), then the path it settles on.
      const hello = await lab.run(from.ns, ['curl', '-sS', '--fail', '--max-time', '15', `http://${target}:8080/hello.txt`]);
      expect(hello.stdout).toBe('hello through the NAT\n');
      const want = expectedPath(a, b);
      const pathOf = async (x: LabAgent, peerIp: string) => {
        const s = await x.json<DeviceStatus & { ok: true }>(['status']);
        const peers = await x.json<{ peers: { ipv4: string; id: string }[] }>(['peers']);
        const id = peers.peers.find((p) => p.ipv4 === peerIp);
        return s.peers.find((p) => p.allowedIps.includes(`${peerIp}/32`))?.path?.kind ?? (id ? 'unknown' : 'missing');
      };
      const settled = want === 'relay' ? 'relay' : 'direct';
      await waitFor(async () => (await pathOf(from, target)) === settled && (await pathOf(to, overlay.get(a)!)) === settled,
        { timeoutMs: want === 'direct' ? 15_000 : want === 'birthday' ? 20_000 : 2_000, intervalMs: 300, what: `${a} <-> ${b} ${want}` }).catch(async (e) => {
        if (want !== 'direct') return; // relayed is the state it starts in (a birthday pair may stay there); checked below
        throw e;
      });
      if (want === 'birthday') {
        const got = [await pathOf(from, target), await pathOf(to, overlay.get(a)!)];
        console.log(`${a} <-> ${b}: ${got.join(' / ')} after birthday probing`);
        for (const g of got) expect(['direct', 'relay']).toContain(g);
      } else {
        expect(await pathOf(from, target)).toBe(want);
        expect(await pathOf(to, overlay.get(a)!)).toBe(want);
      }
      expect((await ssh.run(from.ns, target, 'echo ssh-ok')).trim()).toBe('ssh-ok');
      expect(await fetchAndHash(lab, from.ns, target, 'big.bin')).toBe(bigHash);
    });
  }

  it('agentvpn ping shows the path of each reply', async () => {
    // Like `tailscale ping`: an idle peer may answer through the relay first, then directly.
    const r = await agents.get('alice')!.cli(['ping', 'cone', '--count', '4']);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(4);
    for (const l of lines) expect(l).toMatch(/^pong from cone \(100\.\d+\.\d+\.\d+\) via (direct|relay) \S+ in [\d.]+ ms$/);
    expect(lines[3]).toMatch(/via direct 203\.0\.113\.\d+:51820 /);
    const relayed = await agents.get('alice')!.cli(['ping', 'frank', '--count', '1']);
    expect(relayed.stdout).toMatch(/via relay/);
  });

  it('netcheck tells a symmetric NAT from an endpoint-independent one', async () => {
    const sym = await agents.get('carol')!.json<{ mappingVariesByDestination: boolean; reflexive: string }>(['netcheck']);
    expect(sym.mappingVariesByDestination).toBe(true);
    const eim = await agents.get('alice')!.json<{ mappingVariesByDestination: boolean; reflexive: string }>(['netcheck']);
    expect(eim.mappingVariesByDestination).toBe(false);
    expect(eim.reflexive.startsWith(`${world.sites.home.routerPublicIp}:`)).toBe(true);
    // Any standard STUN server, from the daemon's own socket.
    const stun = world.stun!;
    const other = await agents.get('carol')!.json<{ mappingVariesByDestination: boolean; via: string }>(
      ['netcheck', '--stun', `${stun.ip}:${stun.port}`, '--stun', `${stun.altIp}:${stun.altPort}`]);
    expect(other.mappingVariesByDestination).toBe(true);
  });

  it('falls back to the relay within 10 s when the direct path dies mid-transfer, and returns when it heals', async () => {
    const alice = agents.get('alice')!;
    const target = overlay.get('cone')!;
    const router = world.sites.home.router!;
    const conePublic = world.sites.cone.routerPublicIp!;
    await waitFor(async () => (await alice.json<DeviceStatus>(['status'])).peers.some((p) => p.path?.kind === 'direct' && p.allowedIps.includes(`${target}/32`)),
      { timeoutMs: 15_000, what: 'alice direct to cone' });
    const transfer = fetchAndHash(lab, alice.ns, target, 'big.bin', 8080, ['--limit-rate', '1M']);
    await sleep(2000);
    const rule = ['FORWARD', '-p', 'udp', '-d', conePublic, '-j', 'DROP'];
    await lab.iptables(router, ['-I', ...rule]);
    const cut = Date.now();
    await waitFor(async () => (await alice.json<DeviceStatus>(['status'])).peers.some((p) => p.path?.kind === 'relay' && p.allowedIps.includes(`${target}/32`)),
      { timeoutMs: 12_000, intervalMs: 250, what: 'fallback to relay' });
    expect(Date.now() - cut).toBeLessThan(10_000);
    expect(await transfer).toBe(bigHash);
    await lab.iptables(router, ['-D', ...rule]);
    await waitFor(async () => (await alice.json<DeviceStatus>(['status'])).peers.some((p) => p.path?.kind === 'direct' && p.allowedIps.includes(`${target}/32`)),
      { timeoutMs: 20_000, intervalMs: 500, what: 'back to direct' });
  });
});

describe.runIf(labReady(['ip', 'iptables', 'curl', 'python3', 'miniupnpd', 'nft']))('port mapping with a real miniupnpd', () => {
  let lab: Lab;

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('makes symmetric <-> symmetric direct through a NAT-PMP/PCP mapping', async () => {
    lab = new Lab();
    const world = await buildNatWorld(lab, { sites: [{ name: 'cafe', kind: 'symmetric', agents: ['carol'] }, { name: 'hotel', kind: 'symmetric', agents: ['dave'] }] });
    const upnp = await startMiniupnpd(lab, world.sites.cafe, { stunServer: world.stun!, upnp: false });
    expect(upnp.portForwarding).toBe(true);
    const registry = await startLabRegistry(lab, world.registryNs, world.registryIp);
    const carol = await startLabAgent(lab, findAgent(world, 'carol').ns, 'carol', registry);
    const dave = await startLabAgent(lab, findAgent(world, 'dave').ns, 'dave', registry);
    await waitForFleet([carol, dave]);
    const nc = await carol.json<{ portMapping: { protocol: string; external: string } | null; mappingVariesByDestination: boolean }>(['netcheck']);
    expect(nc.mappingVariesByDestination).toBe(true);
    expect(nc.portMapping?.external.startsWith(`${world.sites.cafe.routerPublicIp}:`)).toBe(true);
    const daveIp = (await dave.json<{ ipv4: string }>(['id'])).ipv4;
    const r = await lab.exec(carol.ns, ['ping', '-c', '3', '-i', '0.3', daveIp]);
    expect(r.code, r.stdout).toBe(0);
    for (const [x, peerIp] of [[carol, daveIp], [dave, (await carol.json<{ ipv4: string }>(['id'])).ipv4]] as const) {
      await waitFor(async () => (await x.json<DeviceStatus>(['status'])).peers.some((p) => p.path?.kind === 'direct' && p.allowedIps.includes(`${peerIp}/32`)),
        { timeoutMs: 20_000, intervalMs: 500, what: `${x.name} direct through the port mapping` });
    }
  });
});
