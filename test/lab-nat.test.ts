/**
 * The NAT lab behaves as its kinds are named, shown with plain sockets only (python3 in the
 * namespaces; no agentvpn): reflectors on two public hosts report the source ip:port they see,
 * a third public host sends unsolicited datagrams, miniupnpd answers NAT-PMP.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Lab,
  addPublicHost,
  buildNatWorld,
  listNamespaces,
  startMiniupnpd,
  startUdpListener,
  startUdpReflector,
  udpProbe,
  udpSend,
  waitFor,
  type NatWorld,
  type PublicHost,
} from '../src/lab/index.js';
import { labReady } from './e2e/checks.js';

const AGENT_PORT = 51820;
const REFLECT_PORT = 3000;

/** NAT-PMP (RFC 6886) request from an agent namespace; prints the answer as hex. */
const NATPMP = `
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
req = bytes.fromhex(sys.argv[2])
for _ in range(5):
    s.sendto(req, (sys.argv[1], 5351))
    try:
        print(s.recvfrom(64)[0].hex())
        break
    except socket.timeout:
        pass
`;

/** PCP (RFC 6887) MAP request for UDP: argv = server, client ip, internal port, suggested external port. */
const PCP_MAP = `
import os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
v4mapped = lambda ip: b'\\0' * 10 + b'\\xff\\xff' + socket.inet_aton(ip)
req = struct.pack('!BBHI', 2, 1, 0, 3600) + v4mapped(sys.argv[2]) + os.urandom(12)
req += struct.pack('!B3xHH', 17, int(sys.argv[3]), int(sys.argv[4])) + v4mapped('0.0.0.0')
for _ in range(5):
    s.sendto(req, (sys.argv[1], 5351))
    try:
        print(s.recvfrom(1100)[0].hex())
        break
    except socket.timeout:
        pass
`;

/** A UPnP IGD (WANIPConnection:2) SOAP call with curl. */
function soapCall(controlUrl: string, action: string, args: Record<string, string | number>): string[] {
  const service = 'urn:schemas-upnp-org:service:WANIPConnection:2';
  const body = Object.entries(args).map(([k, v]) => `<${k}>${v}</${k}>`).join('');
  return [
    'curl', '-sS', '--max-time', '5', '-H', 'Content-Type: text/xml; charset="utf-8"', '-H', `SOAPAction: "${service}#${action}"`,
    '--data',
    '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">' +
      `<s:Body><u:${action} xmlns:u="${service}">${body}</u:${action}></s:Body></s:Envelope>`,
    controlUrl,
  ];
}

function natpmpRequest(opcode: number, internalPort = 0, suggestedPort = 0, lifetime = 0): string {
  const b = Buffer.alloc(opcode === 0 ? 2 : 12);
  b.writeUInt8(0, 0); // version 0
  b.writeUInt8(opcode, 1);
  if (opcode !== 0) {
    b.writeUInt16BE(internalPort, 4);
    b.writeUInt16BE(suggestedPort, 6);
    b.writeUInt32BE(lifetime, 8);
  }
  return b.toString('hex');
}

function portOf(endpoint: string | null | undefined): number {
  if (!endpoint) throw new Error('no answer');
  return Number(endpoint.split(':')[1]);
}

function ipOf(endpoint: string | null | undefined): string {
  if (!endpoint) throw new Error('no answer');
  return endpoint.split(':')[0]!;
}

describe.runIf(labReady(['ip', 'iptables', 'nft', 'python3', 'curl', 'ping', 'miniupnpd']))('NAT lab', () => {
  const lab = new Lab();
  let world: NatWorld;
  let third: PublicHost;
  let reflectors: string[];

  beforeAll(async () => {
    world = await buildNatWorld(lab, {
      sites: [
        { name: 'open', kind: 'none', agents: ['olga'] },
        { name: 'cone', kind: 'eim', agents: ['eve', 'ed'] },
        { name: 'home', kind: 'port-restricted', agents: ['alice', 'bob'] },
        { name: 'cafe', kind: 'symmetric', agents: ['carol'] },
        { name: 'dorm', kind: 'double', agents: ['dan'] },
        { name: 'corp', kind: 'udp-blocked', agents: ['uma'] },
        { name: 'hotel', kind: 'symmetric', agents: ['hal'] },
      ],
    });
    third = await addPublicHost(world, 'third');
    // Two reflectors on two public hosts (different addresses and ports).
    await startUdpReflector(lab, world.registryNs, world.registryIp, REFLECT_PORT);
    await startUdpReflector(lab, world.publicNs, world.publicIp, REFLECT_PORT + 1);
    reflectors = [`${world.registryIp}:${REFLECT_PORT}`, `${world.publicIp}:${REFLECT_PORT + 1}`];
  }, 120_000);

  afterAll(async () => {
    await lab.cleanup();
    const left = (await listNamespaces()).filter((n) => n.startsWith(lab.prefix));
    expect(left).toEqual([]);
  });

  /** Probes both reflectors from the agent's port; returns what they saw. */
  async function mappings(agentNs: string): Promise<string[]> {
    const r = await udpProbe(lab, agentNs, reflectors, { bindPort: AGENT_PORT });
    expect(r.seen.every((s) => s !== null), `both reflectors answer (${JSON.stringify(r.seen)})`).toBe(true);
    return r.seen as string[];
  }

  /** Whether a datagram from the third public host to `endpoint` reaches the agent's port. */
  let thirdPort = 4000;
  async function unsolicitedArrives(agentNs: string, agentIp: string, endpoint: string, agentPort = AGENT_PORT): Promise<boolean> {
    const listener = await startUdpListener(lab, agentNs, agentIp, agentPort);
    try {
      // A fresh source port each time: a conntrack entry left by an earlier try must not help.
      await udpSend(lab, third.ns, { ip: ipOf(endpoint), port: portOf(endpoint) }, { payload: 'unsolicited', bindPort: thirdPort++ });
      return await listener.waitFor((d) => d.data === 'unsolicited', 1500);
    } finally {
      await listener.stop();
    }
  }

  it('has no route out of the lab anywhere', async () => {
    const agentNs = new Set(Object.values(world.sites).flatMap((s) => s.agents.map((a) => a.ns)));
    for (const ns of lab.namespaceNames) {
      const routes = (await lab.run(ns, ['ip', '-4', 'route', 'show', 'default'])).stdout.trim();
      if (!agentNs.has(ns) || routes === '') {
        // routers (except a home router, whose default is its carrier router) and public hosts: none
        const site = Object.values(world.sites).find((s) => s.kind === 'double' && s.routers[0]!.ns === ns);
        if (site) expect(routes).toContain(`via ${site.routers[1]!.lanIp}`);
        else expect(routes, `default route in ${ns}`).toBe('');
        continue;
      }
      const site = Object.values(world.sites).find((s) => s.agents.some((a) => a.ns === ns))!;
      expect(routes).toContain(`via ${site.agents[0]!.gateway}`);
    }
    // An address outside the documentation ranges is unreachable at the agent's router (no packet sent).
    const carol = world.sites.cafe!.agents[0]!;
    const r = await lab.exec(world.sites.cafe!.router!, ['ip', 'route', 'get', '192.0.2.200']);
    expect(r.code).not.toBe(0);
    expect((await lab.exec(carol.ns, ['ip', 'route', 'get', '203.0.113.99'])).stdout).toContain(`via ${carol.gateway}`);
  });

  it('none: the agent is on the public network as itself', async () => {
    const olga = world.sites.open!.agents[0]!;
    const seen = await mappings(olga.ns);
    expect(seen).toEqual([`${olga.ip}:${AGENT_PORT}`, `${olga.ip}:${AGENT_PORT}`]);
    expect(await unsolicitedArrives(olga.ns, olga.ip, seen[0]!)).toBe(true);
  });

  it('port-restricted: same mapping for every destination, unsolicited datagrams are dropped', async () => {
    const site = world.sites.home!;
    const alice = site.agents[0]!;
    const seen = await mappings(alice.ns);
    expect(ipOf(seen[0])).toBe(site.routerPublicIp);
    expect(seen[1]).toBe(seen[0]);
    expect(portOf(seen[0])).toBe(AGENT_PORT); // MASQUERADE keeps a free source port
    expect(await unsolicitedArrives(alice.ns, alice.ip, seen[0]!)).toBe(false);
    // …while the host the agent talked to (same ip:port) does get through.
    const listener = await startUdpListener(lab, alice.ns, alice.ip, AGENT_PORT);
    try {
      await udpSend(lab, world.registryNs, { ip: ipOf(seen[0]), port: portOf(seen[0]) }, {
        payload: 'reply', bindIp: world.registryIp, bindPort: REFLECT_PORT + 100,
      });
      expect(await listener.waitFor((d) => d.data === 'reply', 1500), 'other source port is filtered too').toBe(false);
    } finally {
      await listener.stop();
    }
  });

  it('port-restricted: the host and port the agent sent to can answer later', async () => {
    const site = world.sites.home!;
    const bob = site.agents[1]!;
    // bob talks to the third host's port 4500, which sees his mapping …
    const echo = await startUdpListener(lab, third.ns, third.ip, 4500, { echo: true });
    let mapping: string;
    try {
      const r = await udpProbe(lab, bob.ns, [`${third.ip}:4500`], { bindPort: AGENT_PORT });
      expect(r.seen[0]).toBe('probe');
      mapping = echo.received[0]!.from;
      expect(ipOf(mapping)).toBe(site.routerPublicIp);
    } finally {
      await echo.stop();
    }
    // … and after bob's socket is gone, a datagram from there still reaches his port (the NAT's state).
    const listener = await startUdpListener(lab, bob.ns, bob.ip, AGENT_PORT);
    try {
      await udpSend(lab, third.ns, { ip: ipOf(mapping), port: portOf(mapping) }, { payload: 'answer', bindPort: 4500 });
      expect(await listener.waitFor((d) => d.data === 'answer', 2000)).toBe(true);
    } finally {
      await listener.stop();
    }
  });

  it('eim: same mapping for every destination, and any public host reaches it', async () => {
    const site = world.sites.cone!;
    const [eve, ed] = site.agents;
    // Reachable before the agent ever sent anything: the mapping is fixed, not made by traffic.
    expect(await unsolicitedArrives(ed!.ns, ed!.ip, `${site.routerPublicIp}:${AGENT_PORT + 1}`)).toBe(true);
    const seen = await mappings(eve!.ns);
    expect(seen[1]).toBe(seen[0]);
    expect(seen[0]).toBe(`${site.routerPublicIp}:${AGENT_PORT}`);
    expect(await unsolicitedArrives(eve!.ns, eve!.ip, seen[0]!)).toBe(true);
    // A second agent with the same port behind the same NAT gets the next public port.
    const edSeen = await mappings(ed!.ns);
    expect(edSeen).toEqual([`${site.routerPublicIp}:${AGENT_PORT + 1}`, `${site.routerPublicIp}:${AGENT_PORT + 1}`]);
    expect(site.exposed.find((e) => e.agent === 'ed')?.publicPort).toBe(AGENT_PORT + 1);
  });

  it('symmetric: the mapping varies by destination', async () => {
    const site = world.sites.cafe!;
    const carol = site.agents[0]!;
    const seen = await mappings(carol.ns);
    expect(ipOf(seen[0])).toBe(site.routerPublicIp);
    expect(ipOf(seen[1])).toBe(site.routerPublicIp);
    expect(portOf(seen[0])).not.toBe(portOf(seen[1]));
    expect(await unsolicitedArrives(carol.ns, carol.ip, seen[0]!)).toBe(false);
  });

  it('double: the public side sees the carrier router, and the home router is behind it', async () => {
    const site = world.sites.dorm!;
    const dan = site.agents[0]!;
    const seen = await mappings(dan.ns);
    expect(ipOf(seen[0])).toBe(site.routerPublicIp);
    expect(ipOf(seen[1])).toBe(site.routerPublicIp);
    expect(site.routers).toHaveLength(2);
    expect(site.routers[1]!.ns).toBe(site.router);
    expect(site.routers[0]!.wanIp).toMatch(/^192\.0\.2\./);
    expect(await unsolicitedArrives(dan.ns, dan.ip, seen[0]!)).toBe(false);
  });

  it('udp-blocked: no UDP gets out, TCP does', async () => {
    const uma = world.sites.corp!.agents[0]!;
    const r = await udpProbe(lab, uma.ns, reflectors, { bindPort: AGENT_PORT, timeoutMs: 400, tries: 2 });
    expect(r.seen).toEqual([null, null]);
    const server = lab.spawn(world.registryNs, ['python3', '-c', `
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('${world.registryIp}', 8443)); s.listen(4)
while True:
    c, a = s.accept(); c.sendall(('%s:%d' % a).encode()); c.close()
`], { name: 'tcp-reflector' });
    try {
      await waitFor(async () => (await lab.exec(world.registryNs, ['ss', '-Hltn', 'sport = :8443'])).stdout.trim().length > 0, {
        what: 'TCP reflector',
      });
      const out = await lab.run(uma.ns, ['python3', '-c', `
import socket
s = socket.create_connection(('${world.registryIp}', 8443), timeout=5); print(s.recv(100).decode())
`]);
      expect(ipOf(out.stdout.trim())).toBe(world.sites.corp!.routerPublicIp);
    } finally {
      await lab.kill(server);
    }
  });

  it('two agents behind the same NAT reach each other by private address', async () => {
    const [alice, bob] = world.sites.home!.agents;
    const listener = await startUdpListener(lab, bob!.ns, bob!.ip, 7000, { echo: true });
    try {
      const r = await udpProbe(lab, alice!.ns, [`${bob!.ip}:7000`]);
      expect(r.seen[0]).toBe('probe'); // echoed back directly
      expect(listener.received[0]?.from).toMatch(new RegExp(`^${alice!.ip.replace(/\./g, '\\.')}:`));
    } finally {
      await listener.stop();
    }
    await lab.run(alice!.ns, ['ping', '-c', '1', '-W', '2', bob!.ip]);
  });

  describe('miniupnpd', () => {
    it('answers NAT-PMP, PCP and UPnP on a symmetric NAT; the mappings are reachable from any public host', async () => {
      const site = world.sites.hotel!;
      const hal = site.agents[0]!;
      const upnp = await startMiniupnpd(lab, site, { stunServer: world.stun! });
      try {
        expect(upnp.portForwarding, upnp.log()).toBe(true);
        expect(upnp.externalIp).toBe(site.routerPublicIp);

        // opcode 0: external address. Answer: version 0, op 128, result 0, epoch, address.
        const ext = (await lab.run(hal.ns, ['python3', '-c', NATPMP, upnp.lanIp, natpmpRequest(0)])).stdout.trim();
        const extBuf = Buffer.from(ext, 'hex');
        expect(extBuf.length, ext).toBe(12);
        expect(extBuf.readUInt8(1)).toBe(128);
        expect(extBuf.readUInt16BE(2)).toBe(0);
        expect([...extBuf.subarray(8, 12)].join('.')).toBe(site.routerPublicIp);

        // opcode 1: map UDP internal 51820, suggest external 40000, one hour.
        const map = (await lab.run(hal.ns, ['python3', '-c', NATPMP, upnp.lanIp, natpmpRequest(1, AGENT_PORT, 40000, 3600)])).stdout.trim();
        const mapBuf = Buffer.from(map, 'hex');
        expect(mapBuf.length, map).toBe(16);
        expect(mapBuf.readUInt8(1)).toBe(129);
        expect(mapBuf.readUInt16BE(2), `result code; log:\n${upnp.log()}`).toBe(0);
        expect(mapBuf.readUInt16BE(8)).toBe(AGENT_PORT);
        const mapped = mapBuf.readUInt16BE(10);
        expect(mapped).toBeGreaterThan(0);
        expect(mapBuf.readUInt32BE(12)).toBeGreaterThan(0);
        expect(await upnp.rules()).toContain(`dnat ip to ${hal.ip}:${AGENT_PORT}`);

        // Unsolicited datagrams from a host hal never talked to now reach him.
        expect(await unsolicitedArrives(hal.ns, hal.ip, `${site.routerPublicIp}:${mapped}`)).toBe(true);

        // PCP MAP (version 2, opcode 1) for UDP 51821, suggesting 42000.
        const pcp = Buffer.from((await lab.run(hal.ns, ['python3', '-c', PCP_MAP, upnp.lanIp, hal.ip, '51821', '42000'])).stdout.trim(), 'hex');
        expect(pcp.length).toBe(60);
        expect(pcp.readUInt8(0)).toBe(2);
        expect(pcp.readUInt8(1)).toBe(0x81);
        expect(pcp.readUInt8(3), `PCP result; log:\n${upnp.log()}`).toBe(0);
        expect(pcp.readUInt16BE(40)).toBe(51821);
        const pcpPort = pcp.readUInt16BE(42);
        expect([...pcp.subarray(56, 60)].join('.')).toBe(site.routerPublicIp);
        expect(await unsolicitedArrives(hal.ns, hal.ip, `${site.routerPublicIp}:${pcpPort}`, 51821)).toBe(true);

        // UPnP IGD: GetExternalIPAddress and AddPortMapping (UDP 41000 → hal:51822).
        const control = `http://${upnp.lanIp}:${upnp.upnpHttpPort}/ctl/IPConn`;
        const ip = (await lab.run(hal.ns, soapCall(control, 'GetExternalIPAddress', {}))).stdout;
        expect(ip).toContain(`<NewExternalIPAddress>${site.routerPublicIp}</NewExternalIPAddress>`);
        const add = await lab.run(hal.ns, soapCall(control, 'AddPortMapping', {
          NewRemoteHost: '', NewExternalPort: 41000, NewProtocol: 'UDP', NewInternalPort: 51822, NewInternalClient: hal.ip,
          NewEnabled: 1, NewPortMappingDescription: 'lab', NewLeaseDuration: 3600,
        }));
        expect(add.stdout).toContain('AddPortMappingResponse');
        expect(await unsolicitedArrives(hal.ns, hal.ip, `${site.routerPublicIp}:41000`, 51822)).toBe(true);

        await upnp.stop();
        expect(await unsolicitedArrives(hal.ns, hal.ip, `${site.routerPublicIp}:${mapped}`), 'mapping gone after stop').toBe(false);
      } finally {
        await upnp.stop();
      }
    });

    it('behind a double NAT it sees the carrier NAT and refuses mappings', async () => {
      const site = world.sites.dorm!;
      const dan = site.agents[0]!;
      const upnp = await startMiniupnpd(lab, site, { stunServer: world.stun!, upnp: false });
      try {
        expect(upnp.portForwarding, upnp.log()).toBe(false);
        expect(upnp.ns).toBe(site.routers[0]!.ns); // the home router, the agents' gateway
        // The external address it reports is what STUN saw: the carrier's.
        const ext = Buffer.from((await lab.run(dan.ns, ['python3', '-c', NATPMP, upnp.lanIp, natpmpRequest(0)])).stdout.trim(), 'hex');
        expect(ext.readUInt8(1)).toBe(128);
        expect(ext.readUInt16BE(2)).toBe(0);
        expect([...ext.subarray(8, 12)].join('.')).toBe(site.routerPublicIp);
        // A mapping is refused: result 3, network failure.
        const map = Buffer.from((await lab.run(dan.ns, ['python3', '-c', NATPMP, upnp.lanIp, natpmpRequest(1, AGENT_PORT, 40000, 3600)])).stdout.trim(), 'hex');
        expect(map.readUInt8(1)).toBe(129);
        expect(map.readUInt16BE(2), upnp.log()).toBe(3);
      } finally {
        await upnp.stop();
      }
    });
  });
});
