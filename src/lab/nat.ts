/**
 * The NAT lab: a small "internet" in network namespaces with agents behind real Linux NATs
 * (iptables in router namespaces), for the NAT-traversal tests, the benchmark and `agentvpn demo`.
 *
 *   const lab = new Lab();
 *   const world = await buildNatWorld(lab, { sites: [
 *     { name: 'home', kind: 'port-restricted', agents: ['alice', 'bob'] },
 *     { name: 'cafe', kind: 'symmetric', agents: ['carol'] },
 *   ] });
 *   world.registryNs / world.registryIp            // a public host for the registry and relay
 *   world.sites.home.agents[0].ns                    // run an agent there; its default route is its NAT
 *   world.sites.home.routerPublicIp                  // what the public side sees as its source
 *   const host = await addPublicHost(world, 'third'); // more public hosts (STUN servers, probes…)
 *
 * ## Topology and addresses (documentation ranges only)
 *
 * - Public network 203.0.113.0/24: a Linux bridge `br0` in the public namespace (`world.publicNs`,
 *   which is itself a host at 203.0.113.1 and 203.0.113.254), the registry host at 203.0.113.2,
 *   and from 203.0.113.10 up the routers' public sides, the agents of `none` sites and the extra
 *   public hosts, each on its own veth enslaved to the bridge.
 * - Site number i (0-based, at most 16 sites) has the private LAN 198.51.100.16i/28: the router's
 *   LAN side is a bridge `lan` at .16i+1 (so several agents behind one NAT reach each other on
 *   L2), agents get .16i+2, .16i+3, … (at most 13) and a default route via .16i+1.
 * - A `double` site also has the carrier link 192.0.2.16i/28 between the home router (WAN .16i+2)
 *   and the carrier router (LAN .16i+1); the carrier router has the public address.
 * - Nothing has a route out of the lab: agents route via their router, routers and public hosts
 *   only know their connected networks (all public addresses are inside 203.0.113.0/24), so a
 *   packet to any other address dies with "network unreachable" inside the lab.
 *
 * ## How each NatKind is built (router interfaces `wan` and `lan`)
 *
 * Every NAT router keeps a stateful filter, like a home router's: from `wan` to `lan` it forwards
 * only packets of known connections (conntrack ESTABLISHED/RELATED) and destination-NATed ones
 * (ctstate DNAT: exposed ports, miniupnpd mappings); everything else from outside is dropped.
 *
 * - `none`: no router; the agents sit directly on the public bridge with public addresses.
 * - `port-restricted`: `MASQUERADE` of the LAN. Linux conntrack keeps the source port when it is
 *   free, so the mapping is endpoint-independent; a datagram reaches the agent only when it comes
 *   from the exact ip:port the agent sent to (address+port-dependent filtering).
 * - `eim` (endpoint-independent mapping *and* filtering, "full cone"): Linux has no full-cone NAT
 *   target, so it is built per UDP port: `MASQUERADE` as above, plus for every exposed
 *   (agent, port) a `SNAT --to-source public:P` for that agent's datagrams from the port (the
 *   mapping is fixed) and a `DNAT public:P → agent:port` for datagrams arriving on `wan` (any
 *   public host can reach the mapping, with or without earlier outbound traffic). The ports are
 *   the site's `udpPorts` (default [51820], the port agents listen on), exposed for every agent
 *   when the world is built; `exposePort()` adds more. The public port is the agent's own port
 *   when free in that site, else the next free one (second agent on 51820 → public 51821).
 *   Other ports of an `eim` site behave like `port-restricted`.
 * - `symmetric`: `MASQUERADE --random-fully`: every new (source, destination) pair gets a random
 *   public port, so the mapping varies by destination; filtering as above.
 * - `double`: agent → home router (`MASQUERADE`) → carrier router (`MASQUERADE`) → public.
 *   `router`/`routerPublicIp` are the carrier's (the public face); `routers[0]` is the home router.
 * - `udp-blocked`: `MASQUERADE`, and UDP forwarded from `lan` to `wan` is dropped: only TCP (and
 *   ICMP) gets out. UDP between agents on the same LAN and to the router itself still works.
 *
 * Hairpinning is not provided (an agent sending to its own router's public address does not
 * reach a neighbour). Port mapping protocols (NAT-PMP/PCP/UPnP) come from a real miniupnpd, see
 * miniupnpd.ts; it needs the RFC 5780 STUN server every world runs in the public namespace
 * (`world.stun`), which agents may also use as "any standard STUN server".
 *
 * UDP helpers for tests (python3 in the namespaces): `startUdpReflector` answers each datagram
 * with the `ip:port` it came from, `udpProbe` sends from one socket to several reflectors and
 * returns what each saw, `startUdpListener` records datagrams, `udpSend` sends one.
 */
import type { Lab, LabProcess } from './netns.js';
import { waitFor, WaitAborted } from './proc.js';

export type NatKind =
  | 'none' // agent directly on the public network
  | 'eim' // endpoint-independent mapping and filtering ("full cone") on the exposed UDP ports
  | 'port-restricted' // plain MASQUERADE: EIM mapping, address+port-dependent filtering
  | 'symmetric' // MASQUERADE --random-fully: mapping varies by destination
  | 'double' // home router behind a carrier NAT, both plain MASQUERADE
  | 'udp-blocked'; // MASQUERADE, outbound UDP dropped (only TCP gets out)

export const NAT_KINDS: readonly NatKind[] = ['none', 'eim', 'port-restricted', 'symmetric', 'double', 'udp-blocked'];

export interface NatSiteSpec {
  /** Site name: letters, digits, '-' (used in namespace names). */
  name: string;
  kind: NatKind;
  /** Agent names (unique within the site); at least one, at most 13. */
  agents: string[];
  /** UDP ports the agents listen on; exposed (full cone) for every agent of an `eim` site. Default [51820]. */
  udpPorts?: number[];
}

export interface NatWorldSpec {
  sites: NatSiteSpec[];
  /** Start the RFC 5780 STUN server in the public namespace (needed by miniupnpd). Default true. */
  stunServer?: boolean;
}

export interface NatAgent {
  name: string;
  ns: string;
  /** The agent's address: private (LAN) behind a NAT, public for `none`. */
  ip: string;
  /** Its default gateway (the router's LAN address), null for `none`. */
  gateway: string | null;
}

export interface NatRouter {
  ns: string;
  wanIf: string;
  lanIf: string;
  wanIp: string;
  lanIp: string;
  /** The network on its LAN side (CIDR). */
  lanCidr: string;
}

export interface ExposedPort {
  agent: string;
  /** The agent's UDP port. */
  port: number;
  /** The public endpoint that reaches it from any public host. */
  publicIp: string;
  publicPort: number;
}

export interface NatSite {
  name: string;
  kind: NatKind;
  /** The router with the public address (for `double`: the carrier router); null for `none`. */
  router: string | null;
  /** The address the public side sees as the site's source; null for `none`. */
  routerPublicIp: string | null;
  /** The site's routers from the agents outward: [] for `none`, [home, carrier] for `double`, else one. */
  routers: NatRouter[];
  /** The agents' LAN (CIDR), null for `none`. */
  lanCidr: string | null;
  agents: NatAgent[];
  udpPorts: number[];
  /** Full-cone UDP ports (automatic for `eim`, or added with exposePort). */
  exposed: ExposedPort[];
}

export interface PublicHost {
  name: string;
  ns: string;
  ip: string;
}

export interface StunServerInfo {
  /** Primary address and port (answers Binding requests, with CHANGE-REQUEST support). */
  ip: string;
  port: number;
  /** The alternate address and port used for CHANGE-REQUEST answers (RFC 5780 OTHER-ADDRESS). */
  altIp: string;
  altPort: number;
  proc: LabProcess;
}

export interface NatWorld {
  lab: Lab;
  /** The public "internet": a bridge, and also a host at `publicIp` (and 203.0.113.254). */
  publicNs: string;
  publicIp: string;
  registryNs: string;
  registryIp: string;
  sites: Record<string, NatSite>;
  /** Public hosts added with addPublicHost (the registry is one too). */
  hosts: Record<string, PublicHost>;
  /** The STUN server in the public namespace, null when disabled in the spec. */
  stun: StunServerInfo | null;
}

export const PUBLIC_NET = '203.0.113.0/24';
const PUBLIC_PREFIX = '203.0.113.';
const PUBLIC_IP = '203.0.113.1';
const PUBLIC_ALT_IP = '203.0.113.254';
const REGISTRY_IP = '203.0.113.2';
const FIRST_ALLOCATED = 10;
const LAST_ALLOCATED = 250;
const MAX_SITES = 16;
const MAX_AGENTS_PER_SITE = 13;
export const DEFAULT_AGENT_UDP_PORT = 51820;
export const STUN_PORT = 3478;
export const STUN_ALT_PORT = 3479;

interface WorldState {
  nextPublic: number;
  nextPublicIf: number;
  usedPublic: Set<string>;
}
const worldState = new WeakMap<NatWorld, WorldState>();

function state(world: NatWorld): WorldState {
  const s = worldState.get(world);
  if (!s) throw new Error('not a NatWorld made by buildNatWorld');
  return s;
}

function allocPublicIp(world: NatWorld): string {
  const s = state(world);
  for (;;) {
    if (s.nextPublic > LAST_ALLOCATED) throw new Error('the NAT lab ran out of public addresses');
    const ip = PUBLIC_PREFIX + String(s.nextPublic++);
    if (!s.usedPublic.has(ip)) return claimPublicIp(world, ip);
  }
}

function claimPublicIp(world: NatWorld, ip: string): string {
  const s = state(world);
  const last = Number(ip.slice(PUBLIC_PREFIX.length));
  if (!ip.startsWith(PUBLIC_PREFIX) || !Number.isInteger(last) || last < 2 || last > 253) {
    throw new Error(`public address ${ip} is not in ${PUBLIC_PREFIX}2..253`);
  }
  if (s.usedPublic.has(ip)) throw new Error(`public address ${ip} is already in use`);
  s.usedPublic.add(ip);
  return ip;
}

/** Joins ns to the public bridge with `ip`/24 on interface `ifName`. */
async function attachPublic(world: NatWorld, ns: string, ifName: string, ip: string): Promise<void> {
  const s = state(world);
  const pubIf = `p${s.nextPublicIf++}`;
  await world.lab.connect(world.publicNs, ns, { ifA: pubIf, ifB: ifName, b: `${ip}/24` });
  await world.lab.ip(world.publicNs, ['link', 'set', pubIf, 'master', 'br0']);
}

function checkName(what: string, name: string): void {
  if (!/^[a-z0-9][a-z0-9-]{0,11}$/i.test(name)) {
    throw new Error(`invalid ${what} name ${JSON.stringify(name)}: letters, digits and '-', at most 12 characters`);
  }
}

/**
 * Builds the public network, the registry host and one site per spec entry (see the file header
 * for addresses and how each NAT kind is made). Everything lives in `lab`'s namespaces and is
 * removed by `lab.cleanup()`.
 */
export async function buildNatWorld(lab: Lab, spec: NatWorldSpec): Promise<NatWorld> {
  if (spec.sites.length > MAX_SITES) throw new Error(`at most ${MAX_SITES} sites`);
  const siteNames = new Set<string>();
  for (const site of spec.sites) {
    checkName('site', site.name);
    if (siteNames.has(site.name)) throw new Error(`duplicate site ${site.name}`);
    siteNames.add(site.name);
    if (!NAT_KINDS.includes(site.kind)) throw new Error(`unknown NAT kind ${String(site.kind)}`);
    if (site.agents.length < 1 || site.agents.length > MAX_AGENTS_PER_SITE) {
      throw new Error(`site ${site.name}: 1..${MAX_AGENTS_PER_SITE} agents`);
    }
    if (new Set(site.agents).size !== site.agents.length) throw new Error(`site ${site.name}: duplicate agent names`);
    for (const a of site.agents) checkName('agent', a);
    for (const p of site.udpPorts ?? []) {
      if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`site ${site.name}: bad UDP port ${p}`);
    }
  }

  const publicNs = await lab.addNamespace('pub');
  await lab.ip(publicNs, ['link', 'add', 'br0', 'type', 'bridge']);
  lab.claimInterface(publicNs, 'br0');
  await lab.addAddress(publicNs, 'br0', `${PUBLIC_IP}/24`);
  await lab.addAddress(publicNs, 'br0', `${PUBLIC_ALT_IP}/24`);
  await lab.ip(publicNs, ['link', 'set', 'br0', 'up']);

  const world: NatWorld = {
    lab,
    publicNs,
    publicIp: PUBLIC_IP,
    registryNs: '',
    registryIp: REGISTRY_IP,
    sites: {},
    hosts: {},
    stun: null,
  };
  worldState.set(world, { nextPublic: FIRST_ALLOCATED, nextPublicIf: 0, usedPublic: new Set() });

  const registry = await addPublicHost(world, 'registry', REGISTRY_IP);
  world.registryNs = registry.ns;

  for (const [i, siteSpec] of spec.sites.entries()) {
    world.sites[siteSpec.name] = await buildSite(world, i, siteSpec);
  }

  if (spec.stunServer ?? true) {
    world.stun = await startStunServer(lab, publicNs, [PUBLIC_IP, PUBLIC_ALT_IP], [STUN_PORT, STUN_ALT_PORT]);
  }
  return world;
}

/**
 * Adds a host on the public network (its own namespace `<prefix>h-<name>`, interface eth0) at `ip`
 * (203.0.113.2..253, default: the next free address from .10); returns it.
 */
export async function addPublicHost(world: NatWorld, name: string, ip?: string): Promise<PublicHost> {
  checkName('host', name);
  if (world.hosts[name]) throw new Error(`public host ${name} already exists`);
  const ns = await world.lab.addNamespace(`h-${name}`);
  const addr = ip === undefined ? allocPublicIp(world) : claimPublicIp(world, ip);
  await attachPublic(world, ns, 'eth0', addr);
  const host = { name, ns, ip: addr };
  world.hosts[name] = host;
  return host;
}

async function buildSite(world: NatWorld, index: number, spec: NatSiteSpec): Promise<NatSite> {
  const lab = world.lab;
  const udpPorts = spec.udpPorts ?? [DEFAULT_AGENT_UDP_PORT];
  const site: NatSite = {
    name: spec.name,
    kind: spec.kind,
    router: null,
    routerPublicIp: null,
    routers: [],
    lanCidr: null,
    agents: [],
    udpPorts,
    exposed: [],
  };

  if (spec.kind === 'none') {
    for (const name of spec.agents) {
      const ns = await lab.addNamespace(`${spec.name}-${name}`);
      const ip = allocPublicIp(world);
      await attachPublic(world, ns, 'eth0', ip);
      site.agents.push({ name, ns, ip, gateway: null });
    }
    return site;
  }

  const base = 16 * index;
  const lanCidr = `198.51.100.${base}/28`;
  const lanIp = `198.51.100.${base + 1}`;
  const routerNs = await lab.addRouter(`${spec.name}-r`);
  let outerNs = routerNs;
  let publicIp: string;
  let routerWanIp: string;

  if (spec.kind === 'double') {
    // home router's WAN on the carrier link; the carrier router holds the public address.
    const carrierNs = await lab.addRouter(`${spec.name}-cgn`);
    const linkCidr = `192.0.2.${base}/28`;
    routerWanIp = `192.0.2.${base + 2}`;
    const carrierLanIp = `192.0.2.${base + 1}`;
    await lab.connect(routerNs, carrierNs, { ifA: 'wan', ifB: 'lan', a: `${routerWanIp}/28`, b: `${carrierLanIp}/28` });
    await lab.addRoute(routerNs, 'default', carrierLanIp);
    publicIp = allocPublicIp(world);
    await attachPublic(world, carrierNs, 'wan', publicIp);
    await natRules(lab, carrierNs, linkCidr, false);
    site.routers.push(
      { ns: routerNs, wanIf: 'wan', lanIf: 'lan', wanIp: routerWanIp, lanIp, lanCidr },
      { ns: carrierNs, wanIf: 'wan', lanIf: 'lan', wanIp: publicIp, lanIp: carrierLanIp, lanCidr: linkCidr },
    );
    outerNs = carrierNs;
  } else {
    publicIp = allocPublicIp(world);
    routerWanIp = publicIp;
    await attachPublic(world, routerNs, 'wan', publicIp);
    site.routers.push({ ns: routerNs, wanIf: 'wan', lanIf: 'lan', wanIp: publicIp, lanIp, lanCidr });
  }

  // The LAN: a bridge in the router, one veth per agent enslaved to it.
  await lab.ip(routerNs, ['link', 'add', 'lan', 'type', 'bridge']);
  lab.claimInterface(routerNs, 'lan');
  await lab.addAddress(routerNs, 'lan', `${lanIp}/28`);
  await lab.ip(routerNs, ['link', 'set', 'lan', 'up']);
  for (const [k, name] of spec.agents.entries()) {
    const ns = await lab.addNamespace(`${spec.name}-${name}`);
    const ip = `198.51.100.${base + 2 + k}`;
    await lab.connect(routerNs, ns, { ifA: `l${k}`, ifB: 'eth0', b: `${ip}/28` });
    await lab.ip(routerNs, ['link', 'set', `l${k}`, 'master', 'lan']);
    await lab.addRoute(ns, 'default', lanIp);
    site.agents.push({ name, ns, ip, gateway: lanIp });
  }

  await natRules(lab, routerNs, lanCidr, spec.kind === 'symmetric');
  if (spec.kind === 'udp-blocked') {
    await lab.iptables(routerNs, ['-I', 'FORWARD', '1', '-i', 'lan', '-o', 'wan', '-p', 'udp', '-j', 'DROP']);
  }

  site.router = outerNs;
  site.routerPublicIp = publicIp;
  site.lanCidr = lanCidr;

  if (spec.kind === 'eim') {
    for (const agent of site.agents) {
      for (const port of udpPorts) await exposeSitePort(lab, site, agent.name, port);
    }
  }
  return site;
}

/** MASQUERADE of `lanCidr` out of `wan` plus the stateful inbound filter of a home router. */
async function natRules(lab: Lab, ns: string, lanCidr: string, randomFully: boolean): Promise<void> {
  await lab.iptables(ns, [
    '-t', 'nat', '-A', 'POSTROUTING', '-s', lanCidr, '-o', 'wan', '-j', 'MASQUERADE', ...(randomFully ? ['--random-fully'] : []),
  ]);
  await lab.iptables(ns, ['-A', 'FORWARD', '-i', 'wan', '-o', 'lan', '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED,DNAT', '-j', 'ACCEPT']);
  await lab.iptables(ns, ['-A', 'FORWARD', '-i', 'wan', '-o', 'lan', '-j', 'DROP']);
  // Unsolicited UDP to the router itself is dropped in the filter, as home routers do. Without
  // this, a peer's probe that arrives before our own outbound packet reaches the router's local
  // stack, conntrack confirms an entry for it, and that entry makes MASQUERADE remap our later
  // outbound flow to the same peer to another port, so hole punching could never succeed.
  await lab.iptables(ns, ['-A', 'INPUT', '-i', 'wan', '-p', 'udp', '-m', 'conntrack', '--ctstate', 'NEW,INVALID', '-j', 'DROP']);
}

/**
 * Makes UDP `port` of an agent reachable from every public host (endpoint-independent mapping and
 * filtering): its datagrams from that port always leave as `routerPublicIp:publicPort`, and
 * datagrams from anywhere to that endpoint are forwarded to it. Automatic for `eim` sites (the
 * site's udpPorts); on other single-router sites it acts as a static port forward. Returns the
 * public endpoint (the same one again when already exposed).
 */
export async function exposePort(world: NatWorld, siteName: string, agentName: string, port: number, publicPort?: number): Promise<ExposedPort> {
  const site = world.sites[siteName];
  if (!site) throw new Error(`no site ${siteName}`);
  return exposeSitePort(world.lab, site, agentName, port, publicPort);
}

async function exposeSitePort(lab: Lab, site: NatSite, agentName: string, port: number, publicPort?: number): Promise<ExposedPort> {
  const siteName = site.name;
  const agent = site.agents.find((a) => a.name === agentName);
  if (!agent) throw new Error(`no agent ${agentName} in site ${siteName}`);
  const known = site.exposed.find((e) => e.agent === agentName && e.port === port);
  if (known) return known;
  if (site.kind === 'none') return { agent: agentName, port, publicIp: agent.ip, publicPort: port };
  if (site.routers.length !== 1 || !site.router || !site.routerPublicIp) {
    throw new Error(`exposePort: site ${siteName} (${site.kind}) has no single NAT router`);
  }
  const taken = new Set(site.exposed.map((e) => e.publicPort));
  let pub = publicPort ?? port;
  if (publicPort !== undefined && taken.has(publicPort)) throw new Error(`public port ${publicPort} is already exposed in ${siteName}`);
  while (taken.has(pub)) pub = pub >= 65535 ? 1024 : pub + 1;
  const ns = site.router;
  const publicIp = site.routerPublicIp;
  await lab.iptables(ns, [
    '-t', 'nat', '-I', 'POSTROUTING', '1', '-s', agent.ip, '-o', 'wan', '-p', 'udp', '--sport', String(port),
    '-j', 'SNAT', '--to-source', `${publicIp}:${pub}`,
  ]);
  await lab.iptables(ns, [
    '-t', 'nat', '-A', 'PREROUTING', '-i', 'wan', '-d', publicIp, '-p', 'udp', '--dport', String(pub),
    '-j', 'DNAT', '--to-destination', `${agent.ip}:${port}`,
  ]);
  const exposed: ExposedPort = { agent: agentName, port, publicIp, publicPort: pub };
  site.exposed.push(exposed);
  return exposed;
}

/** Every agent of the world, with its site. */
export function worldAgents(world: NatWorld): (NatAgent & { site: NatSite })[] {
  return Object.values(world.sites).flatMap((site) => site.agents.map((a) => ({ ...a, site })));
}

/** Finds an agent by name (the first match across sites, or `site/agent`). */
export function findAgent(world: NatWorld, name: string): NatAgent & { site: NatSite } {
  const [siteName, agentName] = name.includes('/') ? name.split('/', 2) : [undefined, name];
  const found = worldAgents(world).find((a) => a.name === agentName && (siteName === undefined || a.site.name === siteName));
  if (!found) throw new Error(`no agent ${name} in the NAT world`);
  return found;
}

// ---------------------------------------------------------------------------------------------
// UDP helpers (python3 inside the namespaces)

const PY_REFLECTOR = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    d, a = s.recvfrom(65535)
    s.sendto(('%s:%d' % a).encode(), a)
`;

const PY_PROBE = `
import json, socket, sys
bind_ip, bind_port, timeout, tries = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((bind_ip, bind_port))
s.settimeout(timeout)
out = []
for t in sys.argv[5:]:
    host, port = t.rsplit(':', 1)
    got = None
    for _ in range(tries):
        try:
            s.sendto(b'probe', (host, int(port)))
        except OSError:
            break
        try:
            while True:
                d, a = s.recvfrom(65535)
                if a == (host, int(port)):
                    got = d.decode()
                    break
        except socket.timeout:
            continue
        except OSError:
            break
        break
    out.append(got)
print(json.dumps({'local': '%s:%d' % s.getsockname(), 'seen': out}))
`;

const PY_LISTENER = `
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    d, a = s.recvfrom(65535)
    print(json.dumps({'from': '%s:%d' % a, 'data': d.decode('utf-8', 'replace')}), flush=True)
    if len(sys.argv) > 3:
        s.sendto(d, a)
`;

const PY_SEND = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[3], int(sys.argv[4])))
for _ in range(int(sys.argv[6])):
    s.sendto(sys.argv[5].encode(), (sys.argv[1], int(sys.argv[2])))
`;

/** Waits until a 'pipe'-mode python helper printed "ready" (or fails with its log if it exits). */
async function waitReady(lab: Lab, proc: LabProcess, what: string): Promise<void> {
  let ready = false;
  let exited = false;
  proc.stdout!.on('data', (c: Buffer) => {
    if (c.toString('utf8').includes('ready')) ready = true;
  });
  void proc.exited.then(() => (exited = true));
  await waitFor(
    () => {
      if (ready) return true;
      if (exited) throw new WaitAborted(`${what} exited: ${lab.logTail(proc)}`);
      return false;
    },
    { timeoutMs: 10_000, intervalMs: 20, what },
  );
}

/** A UDP server on ip:port in ns that answers each datagram with the "ip:port" it came from. */
export async function startUdpReflector(lab: Lab, ns: string, ip: string, port: number): Promise<LabProcess> {
  const proc = lab.spawn(ns, ['python3', '-u', '-c', PY_REFLECTOR, ip, String(port)], { name: `reflector-${port}`, stdio: 'pipe' });
  await waitReady(lab, proc, `UDP reflector on ${ip}:${port}`);
  return proc;
}

export interface UdpProbeResult {
  /** The socket's local address in ns. */
  local: string;
  /** Per target, the "ip:port" the reflector saw, or null when no answer came. */
  seen: (string | null)[];
}

/**
 * From one UDP socket in ns (bound to bindPort, default ephemeral), asks each reflector (`ip:port`)
 * what source it sees. Each target gets `tries` datagrams, `timeoutMs` apart, until one answers.
 */
export async function udpProbe(
  lab: Lab,
  ns: string,
  targets: string[],
  opts: { bindIp?: string; bindPort?: number; timeoutMs?: number; tries?: number } = {},
): Promise<UdpProbeResult> {
  const timeout = (opts.timeoutMs ?? 700) / 1000;
  const tries = opts.tries ?? 3;
  const r = await lab.run(
    ns,
    ['python3', '-c', PY_PROBE, opts.bindIp ?? '0.0.0.0', String(opts.bindPort ?? 0), String(timeout), String(tries), ...targets],
    { timeoutMs: 10_000 + targets.length * tries * timeout * 1000 },
  );
  return JSON.parse(r.stdout) as UdpProbeResult;
}

export interface UdpDatagram {
  from: string;
  data: string;
}

export interface UdpListener {
  proc: LabProcess;
  readonly received: UdpDatagram[];
  /** Resolves true when a datagram matching pred has arrived, false after timeoutMs. */
  waitFor(pred: (d: UdpDatagram) => boolean, timeoutMs: number): Promise<boolean>;
  stop(): Promise<void>;
}

/** Records UDP datagrams arriving at ip:port in ns (and echoes them back when `echo`). */
export async function startUdpListener(lab: Lab, ns: string, ip: string, port: number, opts: { echo?: boolean } = {}): Promise<UdpListener> {
  const proc = lab.spawn(ns, ['python3', '-u', '-c', PY_LISTENER, ip, String(port), ...(opts.echo ? ['echo'] : [])], {
    name: `udp-listen-${port}`,
    stdio: 'pipe',
  });
  const received: UdpDatagram[] = [];
  let buf = '';
  proc.stdout!.on('data', (c: Buffer) => {
    buf += c.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line.startsWith('{')) received.push(JSON.parse(line) as UdpDatagram);
    }
  });
  await waitReady(lab, proc, `UDP listener on ${ip}:${port}`);
  return {
    proc,
    received,
    async waitFor(pred, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (received.some(pred)) return true;
        if (Date.now() >= deadline) return false;
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    stop: () => lab.kill(proc),
  };
}

/** Sends `count` datagrams with `payload` from ns (optionally from bindIp:bindPort) to ip:port. */
export async function udpSend(
  lab: Lab,
  ns: string,
  to: { ip: string; port: number },
  opts: { payload?: string; bindIp?: string; bindPort?: number; count?: number } = {},
): Promise<void> {
  await lab.run(ns, [
    'python3', '-c', PY_SEND, to.ip, String(to.port), opts.bindIp ?? '0.0.0.0', String(opts.bindPort ?? 0),
    opts.payload ?? 'hello', String(opts.count ?? 3),
  ]);
}

// ---------------------------------------------------------------------------------------------
// STUN server (RFC 5389 Binding with RFC 5780 CHANGE-REQUEST / OTHER-ADDRESS)

const PY_STUN = `
import select, socket, struct, sys
ips = sys.argv[1].split(',')
ports = [int(p) for p in sys.argv[2].split(',')]
COOKIE = 0x2112A442
socks = {}
for ip in ips:
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, port))
        socks[(ip, port)] = s
def other(vals, v):
    return next((x for x in vals if x != v), v)
def addr_attr(t, ip, port, xor):
    raw = socket.inet_aton(ip)
    if xor:
        port ^= COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, struct.pack('!I', COOKIE)))
    return struct.pack('!HHBBH', t, 8, 0, 1, port) + raw
print('ready', flush=True)
while True:
    r, _, _ = select.select(list(socks.values()), [], [])
    for s in r:
        d, a = s.recvfrom(2048)
        if len(d) < 20:
            continue
        mtype, mlen, cookie = struct.unpack('!HHI', d[:8])
        if mtype != 0x0001:
            continue
        change = 0
        off = 20
        while off + 4 <= min(len(d), 20 + mlen):
            at, al = struct.unpack('!HH', d[off:off + 4])
            if at == 0x0003 and al == 4:
                change = struct.unpack('!I', d[off + 4:off + 8])[0]
            off += 4 + ((al + 3) & ~3)
        lip, lport = s.getsockname()
        rip = other(ips, lip) if change & 4 else lip
        rport = other(ports, lport) if change & 2 else lport
        body = addr_attr(0x0001, a[0], a[1], False) + addr_attr(0x0020, a[0], a[1], True)
        body += addr_attr(0x802b, rip, rport, False) + addr_attr(0x802c, other(ips, lip), other(ports, lport), False)
        resp = struct.pack('!HHI', 0x0101, len(body), cookie) + d[8:20] + body
        socks[(rip, rport)].sendto(resp, a)
`;

/**
 * A STUN server in ns answering Binding requests on every (ip, port) pair given (two of each for
 * RFC 5780 behaviour discovery: CHANGE-REQUEST answers come from the other address and/or port).
 */
export async function startStunServer(lab: Lab, ns: string, ips: [string, string], ports: [number, number]): Promise<StunServerInfo> {
  const proc = lab.spawn(ns, ['python3', '-u', '-c', PY_STUN, ips.join(','), ports.join(',')], { name: 'stun', stdio: 'pipe' });
  await waitReady(lab, proc, `STUN server on ${ips.join(',')}`);
  return { ip: ips[0], port: ports[0], altIp: ips[1], altPort: ports[1], proc };
}
