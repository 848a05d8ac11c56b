import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Lab, startAgentVpn, startLabAgent, startLabRegistry, waitFor, waitForFleet, wgKeyPair,
  type AgentVpnProcess, type LabAgent, type LabProcess, type LabRegistry, type WgInterfaceConfig, type WgKeyPair,
} from '../../src/lab/index.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { labReady, startHttpServer, startUdpEcho } from './checks.js';

/**
 * Issue 7, class 1: a host on the agent's LAN that is not a member routes the agent's overlay
 * addresses via the agent's underlay address and talks to what listens there, and sends packets
 * with overlay source addresses. Each mode runs the attack twice: against a daemon started with
 * --no-firewall (the code before the fix: the attack must work, or the test proves nothing),
 * then against the default daemon (it must get nothing, counted by the nft drop counters),
 * while members keep talking over the tunnel.
 *
 * The LAN is a bridge in its own namespace; agents, the attacker (and the registry) hang off it.
 */

const TABLE = 'agentvpn_agentvpn0';
const HTTP4 = 8080;
const HTTP6 = 8086;
/** A UDP service on the agent bound to the wildcard address, recording who sent what. */
const SINK = 9997;
const ECHO = 9999;
const ATTACKER = '192.0.2.66';
const SPOOFED = 20;

/** UDP on the wildcard (both families): prints the source address of each datagram. */
const UDP_SINK = `
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', int(sys.argv[1])))
while True:
    d, a = s.recvfrom(2048)
    print(a[0], flush=True)
`;

/** One datagram (hex payload) to dst:port; prints "answered" or "silent" (after 1.5 s). */
const UDP_ASK = `
import socket, sys
dst, port, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
fam = socket.AF_INET6 if ':' in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(1.5)
s.sendto(payload, (dst, port))
try:
    s.recvfrom(2048)
    print('answered')
except socket.timeout:
    print('silent')
`;

/** N datagrams from a source address the sender does not own on the tunnel (dst may be fe80::x%eth0). */
const UDP_SPOOF = `
import socket, sys
src, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ':' in src else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((src, 0))
target = socket.getaddrinfo(dst, port, fam, socket.SOCK_DGRAM)[0][4]
for i in range(n):
    s.sendto(b'spoofed %d' % i, target)
`;

/** A DNS query for `name` type A, as hex. */
function dnsQuery(name: string): string {
  const labels = name.split('.').flatMap((l) => [l.length, ...Buffer.from(l)]);
  return Buffer.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, 0, 1, 0, 1]).toString('hex');
}

/** A bridge namespace as the LAN segment; each host gets eth0 on it with its IPv4 (and link-local IPv6). */
async function makeLan(lab: Lab, hosts: Array<[string, string]>): Promise<void> {
  const sw = await lab.addNamespace('lan');
  await lab.ip(sw, ['link', 'add', 'br0', 'type', 'bridge']);
  await lab.ip(sw, ['link', 'set', 'br0', 'up']);
  for (const [ns, ip] of hosts) {
    await lab.exec(ns, ['sysctl', '-q', '-w', 'net.ipv6.conf.default.disable_ipv6=0']);
    const link = await lab.connect(sw, ns, { b: `${ip}/24`, ifB: 'eth0' });
    await lab.ip(sw, ['link', 'set', link.ifA, 'master', 'br0']);
  }
}

/** eth0's link-local IPv6 address once duplicate address detection is done. */
async function linkLocal(lab: Lab, ns: string): Promise<string> {
  return waitFor(async () => {
    const r = await lab.run(ns, ['ip', '-j', '-6', 'addr', 'show', 'dev', 'eth0', 'scope', 'link', '-tentative']);
    return (JSON.parse(r.stdout) as { addr_info: { local: string }[] }[])[0]?.addr_info[0]?.local;
  }, { timeoutMs: 10_000, what: `link-local address of eth0 in ${ns}` });
}

/** The weak host model as the issue found it: no reverse-path filter on the agent. */
async function weakHost(lab: Lab, ns: string): Promise<void> {
  for (const dev of ['all', 'default', 'eth0']) await lab.run(ns, ['sysctl', '-q', '-w', `net.ipv4.conf.${dev}.rp_filter=0`]);
}

interface Target {
  ns: string;
  underlay: string;
  v4: string;
  v6: string;
  /** Fleet mode: the agent's DNS name to ask its responder for. */
  dnsName?: string;
}

interface AttackResult {
  http4: boolean;
  http6: boolean;
  /** A UDP answer from the overlay address: the echo (static) or the DNS responder (fleet), v4 and v6. */
  udp4: boolean;
  udp6: boolean;
  /** Spoofed-source datagrams the agent's wildcard UDP service received, of SPOOFED per family. */
  spoofed4: number;
  spoofed6: number;
}

/** What the non-member on the LAN gets from the agent's overlay addresses. */
class Attacker {
  constructor(private readonly lab: Lab, readonly ns: string) {}

  /** Routes the target's overlay addresses via its underlay address (IPv6: via its link-local one). */
  async aim(t: Target): Promise<void> {
    const ll = await linkLocal(this.lab, t.ns);
    await this.lab.run(this.ns, ['ip', 'route', 'replace', `${t.v4}/32`, 'via', t.underlay]);
    await this.lab.run(this.ns, ['ip', '-6', 'route', 'replace', `${t.v6}/128`, 'via', ll, 'dev', 'eth0']);
  }

  /**
   * Asks the overlay services from its own addresses, then sends datagrams from a member's
   * overlay addresses (claimed on its LAN interface only for that: as a source for the first
   * part they would send the answers into the tunnel, away from the attacker).
   */
  /**
   * The baseline (no firewall): the first packets to a just-restarted daemon can be lost to
   * neighbour discovery on a loaded machine, so the attack is repeated (3 times at most) until it
   * gets `expected`. Only a baseline may retry: a defence must hold on the first try.
   */
  async attackUntil(t: Target, sink: LabProcess, member: { v4: string; v6: string }, expected: AttackResult): Promise<AttackResult> {
    let r = await this.attack(t, sink, member);
    for (let i = 1; i < 3 && JSON.stringify(r) !== JSON.stringify(expected); i++) r = await this.attack(t, sink, member);
    return r;
  }

  async attack(t: Target, sink: LabProcess, member: { v4: string; v6: string }): Promise<AttackResult> {
    const curl = async (url: string) => (await this.lab.exec(this.ns, ['curl', '-s', '--fail', '--max-time', '2', url])).code === 0;
    const ask = async (dst: string) => {
      const [port, payload] = t.dnsName ? [53, dnsQuery(t.dnsName)] : [ECHO, '6563686f'];
      return (await this.lab.run(this.ns, ['python3', '-c', UDP_ASK, dst, String(port), payload])).stdout.trim() === 'answered';
    };
    const [http4, http6, udp4, udp6] = await Promise.all([curl(`http://${t.v4}:${HTTP4}/who`), curl(`http://[${t.v6}]:${HTTP6}/who`), ask(t.v4), ask(t.v6)]);

    const ll = await linkLocal(this.lab, t.ns);
    const seenBefore = sinkSources(sink);
    const claims = [[`${member.v4}/32`], [`${member.v6}/128`, 'nodad']];
    for (const c of claims) await this.lab.run(this.ns, ['ip', 'addr', 'add', c[0], 'dev', 'eth0', ...c.slice(1)]);
    try {
      await this.lab.run(this.ns, ['python3', '-c', UDP_SPOOF, member.v4, t.underlay, String(SINK), String(SPOOFED)]);
      await this.lab.run(this.ns, ['python3', '-c', UDP_SPOOF, member.v6, `${ll}%eth0`, String(SINK), String(SPOOFED)]);
    } finally {
      for (const c of claims) await this.lab.run(this.ns, ['ip', 'addr', 'del', c[0], 'dev', 'eth0']);
    }
    await new Promise((r) => setTimeout(r, 300));
    const seen = sinkSources(sink).slice(seenBefore.length);
    const spoofed4 = seen.filter((s) => s === `::ffff:${member.v4}`).length;
    const spoofed6 = seen.filter((s) => s === member.v6).length;
    return { http4, http6, udp4, udp6, spoofed4, spoofed6 };
  }
}

function sinkSources(sink: LabProcess): string[] {
  return readFileSync(sink.logFile, 'utf8').split('\n').filter(Boolean);
}

function describeAttack(r: AttackResult): string {
  const yn = (b: boolean) => (b ? 'answered' : 'nothing');
  return `HTTP v4 ${yn(r.http4)}, HTTP v6 ${yn(r.http6)}, UDP v4 ${yn(r.udp4)}, UDP v6 ${yn(r.udp6)}, ` +
    `spoofed sources accepted v4 ${r.spoofed4}/${SPOOFED}, v6 ${r.spoofed6}/${SPOOFED}`;
}

const NOTHING: AttackResult = { http4: false, http6: false, udp4: false, udp6: false, spoofed4: 0, spoofed6: 0 };
const EVERYTHING: AttackResult = { http4: true, http6: true, udp4: true, udp6: true, spoofed4: SPOOFED, spoofed6: SPOOFED };

/** The agent's own services: HTTP on both overlay addresses, the UDP sink on the wildcard, a UDP echo (static). */
async function startServices(lab: Lab, t: Target, dir: string, echo: boolean): Promise<LabProcess[]> {
  const procs = [
    await startHttpServer(lab, t.ns, dir, t.v4, HTTP4),
    await startHttpServer(lab, t.ns, dir, t.v6, HTTP6),
    lab.spawn(t.ns, ['python3', '-c', UDP_SINK, String(SINK)], { name: 'udp-sink' }),
  ];
  if (echo) {
    procs.push(startUdpEcho(lab, t.ns, t.v4, ECHO, 'echo4'));
    procs.push(startUdpEcho(lab, t.ns, t.v6, ECHO, 'echo6'));
  }
  await waitFor(async () => (await lab.exec(t.ns, ['ss', '-Hlun', `sport = :${SINK}`])).stdout.trim().length > 0, { what: 'udp sink' });
  if (echo) await waitFor(async () => (await lab.exec(t.ns, ['ss', '-Hlun', `sport = :${ECHO}`])).stdout.trim().split('\n').length >= 2, { what: 'udp echo' });
  return procs;
}

/** What a member (over the tunnel) and a local process (over lo) get from the same services. */
async function expectMembersServed(lab: Lab, t: Target, memberNs: string): Promise<void> {
  for (const ns of [memberNs, t.ns]) {
    for (const url of [`http://${t.v4}:${HTTP4}/who`, `http://[${t.v6}]:${HTTP6}/who`]) {
      const r = await lab.exec(ns, ['curl', '-sS', '--fail', '--max-time', '5', url]);
      expect(r.stdout, `${ns} -> ${url}: ${r.stderr}`).toBe('agent a\n');
    }
    const [port, payload] = t.dnsName ? [53, dnsQuery(t.dnsName)] : [ECHO, '6563686f'];
    for (const dst of [t.v4, t.v6]) {
      const r = await lab.run(ns, ['python3', '-c', UDP_ASK, dst, String(port), payload]);
      expect(r.stdout.trim(), `${ns} -> udp ${dst}:${port}`).toBe('answered');
    }
  }
}

async function nftTables(lab: Lab, ns: string): Promise<string> {
  return (await lab.run(ns, ['nft', 'list', 'tables'])).stdout;
}

function droppedTotal(s: DeviceStatus): number {
  return (s.firewall?.dropped?.toOverlay ?? 0) + (s.firewall?.dropped?.spoofedSource ?? 0);
}

describe.runIf(labReady(['ip', 'curl', 'python3', 'nft']))('isolation: overlay addresses are reachable through the tunnel only', () => {
  describe('static mode (wg-quick config)', () => {
    let lab: Lab;
    let nsA: string, nsB: string, nsX: string;
    let keyA: WgKeyPair, keyB: WgKeyPair;
    let a: AgentVpnProcess | null = null;
    let services: LabProcess[] = [];
    let sink: LabProcess;
    let x: Attacker;
    const target: Target = { ns: '', underlay: '192.0.2.1', v4: '100.64.0.1', v6: 'fd00:a::1' };
    const member = { v4: '100.64.0.2', v6: 'fd00:a::2' };
    const cfgA = (): WgInterfaceConfig => ({
      privateKey: keyA.privateKey, listenPort: 51820, addresses: ['100.64.0.1/24', 'fd00:a::1/64'],
      peers: [{ publicKey: keyB.publicKey, allowedIps: ['100.64.0.2/32', 'fd00:a::2/128'], endpoint: '192.0.2.2:51821' }],
    });
    const cfgB = (): WgInterfaceConfig => ({
      privateKey: keyB.privateKey, listenPort: 51821, addresses: ['100.64.0.2/24', 'fd00:a::2/64'],
      peers: [{ publicKey: keyA.publicKey, allowedIps: ['100.64.0.1/32', 'fd00:a::1/128'], endpoint: '192.0.2.1:51820' }],
    });
    const status = async (): Promise<DeviceStatus> => JSON.parse((await a!.cli(['status', '--json'], { check: true })).stdout) as DeviceStatus;
    const restartA = async (extraArgs: string[] = []) => {
      for (const p of services) await lab.kill(p, { graceMs: 500 });
      if (a) await a.stop();
      a = await startAgentVpn(lab, nsA, cfgA(), 'agentvpn0', { extraArgs });
      services = await startServices(lab, target, join(lab.dir, 'www'), true);
      sink = services[2];
      await waitFor(async () => (await lab.exec(nsB, ['ping', '-c', '1', '-W', '1', target.v4])).code === 0, { timeoutMs: 15_000, what: 'b reaches a over the tunnel' });
    };

    beforeAll(async () => {
      lab = new Lab();
      [nsA, nsB, nsX] = [await lab.addNamespace('a'), await lab.addNamespace('b'), await lab.addNamespace('x')];
      target.ns = nsA;
      await makeLan(lab, [[nsA, '192.0.2.1'], [nsB, '192.0.2.2'], [nsX, ATTACKER]]);
      await weakHost(lab, nsA);
      mkdirSync(join(lab.dir, 'www'), { recursive: true });
      writeFileSync(join(lab.dir, 'www', 'who'), 'agent a\n');
      [keyA, keyB] = [await wgKeyPair(), await wgKeyPair()];
      await startAgentVpn(lab, nsB, cfgB(), 'agentvpn0');
      x = new Attacker(lab, nsX);
      await x.aim(target);
    });

    afterAll(async () => {
      await lab?.cleanup();
    });

    it('without the firewall (--no-firewall: the code before the fix), a LAN host reaches the overlay services and passes spoofed overlay sources', async () => {
      await restartA(['--no-firewall']);
      const r = await x.attackUntil(target, sink, member, EVERYTHING);
      console.log(`static, --no-firewall: non-member on the LAN got ${describeAttack(r)}`);
      expect(r).toEqual(EVERYTHING);
      const s = await status();
      expect(s.firewall).toMatchObject({ enabled: false, table: null });
      expect((await a!.cli(['status'], { check: true })).stdout).toMatch(/firewall:\s+off \(--no-firewall\)/);
    });

    it('with the firewall, the LAN host gets nothing and the drops are counted, while members and local processes are served', async () => {
      await restartA();
      const before = await status();
      const r = await x.attack(target, sink, member);
      const after = await status();
      console.log(`static, firewall: non-member on the LAN got ${describeAttack(r)}; nft dropped ${droppedTotal(before)} -> ${droppedTotal(after)} ` +
        `(to overlay ${after.firewall?.dropped?.toOverlay}, spoofed source ${after.firewall?.dropped?.spoofedSource})`);
      expect(r).toEqual(NOTHING);
      expect(before.firewall).toMatchObject({ enabled: true, table: `inet ${TABLE}`, prefixes: ['100.64.0.0/24', 'fd00:a::/64'] });
      expect(after.firewall!.dropped!.spoofedSource).toBeGreaterThanOrEqual(2 * SPOOFED);
      expect(after.firewall!.dropped!.toOverlay).toBeGreaterThanOrEqual(4);
      await expectMembersServed(lab, target, nsB);
      const human = (await a!.cli(['status'], { check: true })).stdout;
      expect(human).toMatch(new RegExp(`firewall:\\s+nftables table inet ${TABLE}, ${droppedTotal(await status())} packets dropped`));
    });

    it('`down` removes the table; a table left by kill -9 is replaced on the next up', async () => {
      expect(await nftTables(lab, nsA)).toContain(TABLE);
      await a!.cli(['down'], { check: true });
      await a!.process.exited;
      expect(await nftTables(lab, nsA)).not.toContain(TABLE);

      await restartA();
      await x.attack(target, sink, member); // some drops, so the stale table's counters are not zero
      a!.process.kill('SIGKILL');
      await a!.process.exited;
      await lab.run(nsA, ['nft', 'add', 'counter', 'inet', TABLE, 'left_behind']);
      const stale = (await lab.run(nsA, ['nft', 'list', 'table', 'inet', TABLE])).stdout;
      expect(stale).toContain('left_behind');
      a = null;

      await restartA();
      const fresh = (await lab.run(nsA, ['nft', 'list', 'table', 'inet', TABLE])).stdout;
      const rules = (text: string) => text.split('\n').filter((l) => /\bdrop$|\baccept$/.test(l.trim())).length;
      console.log(`after kill -9: stale table had ${rules(stale)} rules and a left_behind counter; after up: ${rules(fresh)} rules, counters ${JSON.stringify((await status()).firewall?.dropped)}`);
      expect(fresh).not.toContain('left_behind');
      expect(rules(fresh)).toBe(rules(stale));
      expect((await status()).firewall?.dropped).toEqual({ toOverlay: 0, spoofedSource: 0 });
      expect(await x.attack(target, sink, member)).toEqual(NOTHING);
    });
  });

  describe('fleet mode (registry)', () => {
    let lab: Lab;
    let registry: LabRegistry;
    let a: LabAgent, b: LabAgent;
    let nsX: string;
    let x: Attacker;
    let services: LabProcess[] = [];
    const target: Target = { ns: '', underlay: '192.0.2.1', v4: '', v6: '' };
    const member = { v4: '', v6: '' };
    const status = async (): Promise<DeviceStatus> => a.json<DeviceStatus>(['status']);
    const restartA = async (extraArgs: string[] = []) => {
      for (const p of services) await lab.kill(p, { graceMs: 500 });
      if (a.proc) await lab.kill(a.proc);
      await startLabAgent(lab, a.ns, 'a', registry, { agent: a, extraArgs });
      await waitForFleet([a, b], 20_000);
      services = await startServices(lab, target, join(lab.dir, 'www'), false);
      await waitFor(async () => (await lab.exec(b.ns, ['ping', '-c', '1', '-W', '1', target.v4])).code === 0, { timeoutMs: 15_000, what: 'b reaches a over the tunnel' });
    };

    beforeAll(async () => {
      lab = new Lab();
      const [nsA, nsB, nsR] = [await lab.addNamespace('a'), await lab.addNamespace('b'), await lab.addNamespace('reg')];
      nsX = await lab.addNamespace('x');
      await makeLan(lab, [[nsA, '192.0.2.1'], [nsB, '192.0.2.2'], [nsR, '192.0.2.10'], [nsX, ATTACKER]]);
      await weakHost(lab, nsA);
      mkdirSync(join(lab.dir, 'www'), { recursive: true });
      writeFileSync(join(lab.dir, 'www', 'who'), 'agent a\n');
      registry = await startLabRegistry(lab, nsR, '192.0.2.10', { network: 'lab' });
      a = await startLabAgent(lab, nsA, 'a', registry, { extraArgs: ['--no-firewall'] });
      b = await startLabAgent(lab, nsB, 'b', registry, { port: 51821 });
      await waitForFleet([a, b], 20_000);
      const idA = await a.json<{ ipv4: string; ipv6: string }>(['id']);
      const idB = await b.json<{ ipv4: string; ipv6: string }>(['id']);
      Object.assign(target, { ns: nsA, v4: idA.ipv4, v6: idA.ipv6, dnsName: 'a.lab' });
      Object.assign(member, { v4: idB.ipv4, v6: idB.ipv6 });
      services = await startServices(lab, target, join(lab.dir, 'www'), false);
      x = new Attacker(lab, nsX);
      await x.aim(target);
    });

    afterAll(async () => {
      await lab?.cleanup();
    });

    it('without the firewall (--no-firewall), a LAN host reaches the overlay HTTP and DNS and passes spoofed overlay sources', async () => {
      const r = await x.attackUntil(target, services[2], member, EVERYTHING);
      console.log(`fleet, --no-firewall: non-member on the LAN got ${describeAttack(r)}`);
      expect(r).toEqual(EVERYTHING);
    });

    it('with the firewall (pool and ULA /48 guarded), the LAN host gets nothing, drops are counted, members are served', async () => {
      await restartA();
      const before = await status();
      const r = await x.attack(target, services[2], member);
      const after = await status();
      console.log(`fleet, firewall: non-member on the LAN got ${describeAttack(r)}; nft dropped ${droppedTotal(before)} -> ${droppedTotal(after)} ` +
        `(to overlay ${after.firewall?.dropped?.toOverlay}, spoofed source ${after.firewall?.dropped?.spoofedSource})`);
      expect(r).toEqual(NOTHING);
      expect(before.firewall?.table).toBe(`inet ${TABLE}`);
      expect(before.firewall?.prefixes).toEqual(['100.64.0.0/10', expect.stringMatching(/^fd[0-9a-f]{2}:[0-9a-f:]+\/48$/)]);
      expect(after.firewall!.dropped!.spoofedSource).toBeGreaterThanOrEqual(2 * SPOOFED);
      expect(after.firewall!.dropped!.toOverlay).toBeGreaterThanOrEqual(4);
      await expectMembersServed(lab, target, b.ns);
    });

    it('`down` removes the table', async () => {
      await a.cli(['down']);
      await a.proc!.exited;
      expect(await nftTables(lab, a.ns)).not.toContain(TABLE);
    });
  });
});
