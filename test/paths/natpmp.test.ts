import { socketIn } from '../fixtures/socket-in-netns.js';
import { randomInt } from 'node:crypto';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Lab, labUnavailableReasons, waitFor, type LabProcess } from '../../src/lab/index.js';
import { defaultGatewayV4, parseDefaultRoutes } from '../../src/paths/gateway.js';
import { formatMappingEndpoint, releaseUdpMapping, requestUdpMapping } from '../../src/paths/natpmp.js';
import type { PortMapping } from '../../src/paths/port-mapping.js';
import { Netcheck } from '../../src/paths/netcheck.js';
import { answerBindingRequest } from '../../src/net/stun.js';
import { makeEndpoint } from '../../src/net/endpoint.js';

const ip4 = (s: string): Uint8Array => Uint8Array.from(s.split('.').map(Number));

// ------------------------------------------------------------------ /proc/net/route parsing

describe('default gateway from /proc/net/route', () => {
  const text = [
    'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT',
    'eth1\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0',
    'eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0',
    'eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0', // 10.0.0.0/24, on-link
    'tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0', // default without a gateway
    'eth2\t00000000\t0103A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0', // not up
    'garbage line',
    '',
  ].join('\n');

  it('picks the up default route with a gateway and the lowest metric (little-endian hex)', () => {
    const routes = parseDefaultRoutes(text, true);
    expect(routes).toEqual([
      { iface: 'eth0', gateway: '10.0.0.1', metric: 100 },
      { iface: 'eth1', gateway: '192.168.2.1', metric: 600 },
    ]);
    expect(parseDefaultRoutes(text, false)[0]!.gateway).toBe('1.0.0.10');
  });

  it('no file, no default route: null', () => {
    expect(defaultGatewayV4('/nonexistent/route')).toBeNull();
    expect(parseDefaultRoutes('Iface\tDestination\n')).toEqual([]);
  });
});

// ------------------------------------------------------------------ fake servers on loopback

/** A scripted NAT-PMP/PCP server on a random 127/8 address, port 5351. */
class FakeServer {
  readonly requests: Buffer[] = [];
  private sock!: Socket;
  address = `127.${randomInt(1, 255)}.${randomInt(1, 255)}.1`;
  constructor(private readonly answer: (req: Buffer, n: number) => Buffer[] | null) {}

  async start(): Promise<void> {
    this.sock = createSocket('udp4');
    this.sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
      this.requests.push(msg);
      for (const out of this.answer(msg, this.requests.length) ?? []) this.sock.send(out, rinfo.port, rinfo.address);
    });
    await new Promise<void>((resolve, reject) => {
      this.sock.once('error', reject);
      this.sock.bind(5351, this.address, () => resolve());
    });
  }

  stop(): void {
    this.sock?.close();
  }
}

const EXT = ip4('203.0.113.77');

/** NAT-PMP (RFC 6886) answers; version 2 gets "unsupported version". */
function natpmpAnswer(req: Buffer): Buffer[] | null {
  if (req[0] !== 0) {
    const b = Buffer.alloc(8);
    b[1] = 128 + (req[1]! & 0x7f);
    b.writeUInt16BE(1, 2);
    return [b];
  }
  if (req[1] === 0 && req.length === 2) {
    const b = Buffer.alloc(12);
    b[1] = 128;
    b.writeUInt32BE(1000, 4);
    b.set(EXT, 8);
    return [b];
  }
  if (req[1] === 1 && req.length === 12) {
    const b = Buffer.alloc(16);
    b[1] = 129;
    b.writeUInt32BE(1000, 4);
    b.writeUInt16BE(req.readUInt16BE(4), 8);
    const lifetime = req.readUInt32BE(8);
    b.writeUInt16BE(lifetime === 0 ? 0 : req.readUInt16BE(4) + 1, 10);
    b.writeUInt32BE(Math.min(lifetime, 3600), 12);
    return [b];
  }
  return null;
}

/** PCP (RFC 6887) MAP answers: echo the opcode data, assign port internal+2 on 203.0.113.77. */
function pcpAnswer(req: Buffer, result = 0): Buffer[] | null {
  if (req[0] !== 2 || req[1] !== 1 || req.length !== 60) return null;
  const b = Buffer.alloc(60);
  b[0] = 2;
  b[1] = 0x81;
  b[3] = result;
  const lifetime = req.readUInt32BE(4);
  b.writeUInt32BE(Math.min(lifetime, 7200), 4);
  b.writeUInt32BE(5000, 8);
  req.copy(b, 24, 24, 60);
  b.writeUInt16BE(lifetime === 0 ? 0 : req.readUInt16BE(40) + 2, 42);
  b.fill(0, 44, 60);
  b[54] = 0xff;
  b[55] = 0xff;
  b.set(EXT, 56);
  return [b];
}

describe('port mapping client against scripted servers (loopback)', () => {
  const servers: FakeServer[] = [];
  const serve = async (answer: (req: Buffer, n: number) => Buffer[] | null): Promise<FakeServer> => {
    const s = new FakeServer(answer);
    await s.start();
    servers.push(s);
    return s;
  };
  afterEach(() => {
    for (const s of servers.splice(0)) s.stop();
  });

  it('auto: PCP first, NAT-PMP after "unsupported version"', async () => {
    const s = await serve(natpmpAnswer);
    const m = await requestUdpMapping({ gateway: s.address, internalPort: 41641, lifetimeSec: 7200 });
    expect(m).toMatchObject({ protocol: 'nat-pmp', externalPort: 41642, lifetimeSec: 3600, gateway: s.address, epochSec: 1000 });
    expect(Array.from(m!.externalAddress)).toEqual(Array.from(EXT));
    expect(formatMappingEndpoint(m!)).toBe('203.0.113.77:41642');
    expect(s.requests[0]![0]).toBe(2); // asked in PCP first
    expect(s.requests.some((r) => r[0] === 0 && r[1] === 1 && r.readUInt16BE(4) === 41641 && r.readUInt16BE(6) === 41641)).toBe(true);
    // Release: lifetime 0 and suggested external port 0 for the internal port (RFC 6886 §3.4).
    const before = s.requests.length;
    await releaseUdpMapping(m!, 41641);
    const rel = s.requests.slice(before).find((r) => r[1] === 1)!;
    expect(rel.readUInt16BE(4)).toBe(41641);
    expect(rel.readUInt16BE(6)).toBe(0);
    expect(rel.readUInt32BE(8)).toBe(0);
    // Explicit PCP against a NAT-PMP-only server: no mapping.
    expect(await requestUdpMapping({ gateway: s.address, internalPort: 41641, protocol: 'pcp' })).toBeNull();
  });

  it('auto with a PCP server: MAP with our address and a nonce; release reuses the nonce', async () => {
    const s = await serve((req) => pcpAnswer(req));
    const m = await requestUdpMapping({ gateway: s.address, internalPort: 51820 });
    expect(m).toMatchObject({ protocol: 'pcp', externalPort: 51822, lifetimeSec: 7200, epochSec: 5000 });
    const req = s.requests[0]!;
    expect(req.readUInt32BE(4)).toBe(7200);
    expect(Array.from(req.subarray(8, 24))).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...ip4('127.0.0.1')]);
    expect(req[36]).toBe(17);
    expect(Buffer.from(m!.nonce!).equals(req.subarray(24, 36))).toBe(true);
    await releaseUdpMapping(m!, 51820);
    const rel = s.requests.at(-1)!;
    expect(rel.readUInt32BE(4)).toBe(0);
    expect(rel.subarray(24, 36).equals(req.subarray(24, 36))).toBe(true);
  });

  it('retransmits when answers are lost, and ignores garbage and foreign nonces', async () => {
    const s = await serve((req, n) => {
      if (n <= 2) return null; // the first two tries are "lost"
      const good = pcpAnswer(req)!;
      const foreign = Buffer.from(good[0]!);
      foreign[30]! ^= 0xff; // another client's nonce
      return [Buffer.from('not a pcp answer'), Buffer.alloc(3), foreign, ...good];
    });
    const m = await requestUdpMapping({ gateway: s.address, internalPort: 40000, protocol: 'pcp', timeoutMs: 5000 });
    expect(m?.externalPort).toBe(40002);
    expect(s.requests.length).toBeGreaterThanOrEqual(3);
    expect(new Set(s.requests.map((r) => r.toString('hex'))).size).toBe(1); // retries repeat the same request
  });

  it('a refusal (PCP NOT_AUTHORIZED / NAT-PMP failure) gives null', async () => {
    const s = await serve((req) => pcpAnswer(req, 2));
    expect(await requestUdpMapping({ gateway: s.address, internalPort: 40000 })).toBeNull();
    const t = await serve((req) => {
      const a = natpmpAnswer(req);
      if (a && req[0] === 0 && req[1] === 1) a[0]!.writeUInt16BE(3, 2); // network failure
      return a;
    });
    expect(await requestUdpMapping({ gateway: t.address, internalPort: 40000, protocol: 'nat-pmp' })).toBeNull();
  });

  it('no server, a non-IPv4 gateway, bad arguments', async () => {
    const silent = `127.${randomInt(1, 255)}.${randomInt(1, 255)}.2`; // nothing listens: ICMP port unreachable
    expect(await requestUdpMapping({ gateway: silent, internalPort: 40000, timeoutMs: 3000 })).toBeNull();
    expect(await requestUdpMapping({ gateway: 'fd00::1', internalPort: 40000 })).toBeNull();
    expect(await requestUdpMapping({ gateway: 'router.local', internalPort: 40000 })).toBeNull();
    await expect(requestUdpMapping({ gateway: '127.0.0.1', internalPort: 0 })).rejects.toThrow(RangeError);
    await expect(requestUdpMapping({ gateway: '127.0.0.1', internalPort: 70000 })).rejects.toThrow(RangeError);
  });
});

// ------------------------------------------------------------------ real miniupnpd in a NAT lab


/** A STUN server (our answerBindingRequest) on a socket in the public namespace. */
function serveStun(sock: Socket): void {
  sock.on('message', (msg, rinfo) => {
    const answer = answerBindingRequest(msg, 0, msg.length, makeEndpoint(ip4(rinfo.address), rinfo.port), 0);
    if (answer) sock.send(answer, rinfo.port, rinfo.address);
  });
}

const TOOLS = ['ip', 'nft', 'miniupnpd'];
const reasons = labUnavailableReasons(TOOLS);
if (reasons.length > 0 && process.env.CI) {
  describe('NAT-PMP/PCP against miniupnpd', () => {
    it('lab prerequisites', () => {
      throw new Error(`cannot run: ${reasons.join('; ')} (packages: miniupnpd-nftables, nftables)`);
    });
  });
}

describe.skipIf(reasons.length > 0)('NAT-PMP/PCP against miniupnpd in a NAT lab (root)', () => {
  // client 198.51.100.2 ── lan 198.51.100.1 [router: masquerade, miniupnpd] wan 203.0.113.1 ── 203.0.113.2 public
  const LAN_GW = '198.51.100.1';
  const ROUTER_PUBLIC = '203.0.113.1';
  const PUBLIC_HOST = '203.0.113.2';
  let lab: Lab;
  let client: string;
  let router: string;
  let pub: string;
  let miniupnpd: LabProcess;
  const sockets: Socket[] = [];
  const own = async (p: Promise<Socket>): Promise<Socket> => {
    const s = await p;
    sockets.push(s);
    return s;
  };

  beforeAll(async () => {
    lab = new Lab();
    client = await lab.addNamespace('pmc');
    router = await lab.addRouter('pmr');
    pub = await lab.addNamespace('pmp');
    await lab.connect(client, router, { a: '198.51.100.2/24', b: `${LAN_GW}/24`, ifA: 'eth0', ifB: 'lan' });
    await lab.connect(router, pub, { a: `${ROUTER_PUBLIC}/24`, b: `${PUBLIC_HOST}/24`, ifA: 'wan', ifB: 'eth0' });
    await lab.addRoute(client, 'default', LAN_GW);
    // The router: source NAT of the LAN, and the chains miniupnpd fills (after the layout of the
    // package's nft_init.sh, in one table; its NAT hooks run just before the masquerade's).
    await lab.run(router, ['nft', '-f', '-'], {
      input: `table inet lab {
  chain miniupnpd {}
  chain prerouting_miniupnpd {}
  chain postrouting_miniupnpd {}
  chain forward { type filter hook forward priority filter; policy accept; jump miniupnpd; }
  chain prerouting { type nat hook prerouting priority dstnat; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; jump postrouting_miniupnpd; oifname "wan" masquerade; }
}
`,
    });
    // miniupnpd refuses to map when its WAN address is reserved (all documentation ranges are),
    // unless STUN shows the WAN unfiltered: it asks our STUN server on the public host.
    const stun = await own(socketIn(pub, PUBLIC_HOST, 3478));
    serveStun(stun);
    const conf = join(lab.dir, 'miniupnpd.conf');
    writeFileSync(conf, [
      'ext_ifname=wan',
      'listening_ip=lan',
      'ipv6_disable=yes',
      'enable_natpmp=yes',
      'enable_upnp=no',
      'secure_mode=yes',
      'system_uptime=no',
      'uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b',
      `lease_file=${join(lab.dir, 'miniupnpd.leases')}`,
      'ext_perform_stun=yes',
      `ext_stun_host=${PUBLIC_HOST}`,
      'ext_stun_port=3478',
      'upnp_table_name=lab',
      'upnp_nat_table_name=lab',
      'upnp_forward_chain=miniupnpd',
      'upnp_nat_chain=prerouting_miniupnpd',
      'upnp_nat_postrouting_chain=postrouting_miniupnpd',
      'allow 1024-65535 198.51.100.0/24 1024-65535',
      'deny 0-65535 0.0.0.0/0 0-65535',
      '',
    ].join('\n'));
    miniupnpd = lab.spawn(router, ['miniupnpd', '-d', '-f', conf, '-P', join(lab.dir, 'miniupnpd.pid')], { name: 'miniupnpd' });
    await waitFor(() => {
      if (miniupnpd.exitCode !== null) throw new Error(`miniupnpd exited:\n${lab.logTail(miniupnpd)}`);
      return lab.logTail(miniupnpd, 200).includes('Listening for NAT-PMP/PCP traffic');
    }, { timeoutMs: 30_000, what: 'miniupnpd to listen for NAT-PMP/PCP' });
    expect(lab.logTail(miniupnpd, 200)).toContain('Port forwarding is now enabled');
  }, 60_000);

  afterAll(async () => {
    for (const s of sockets) {
      try {
        s.close();
      } catch {
        // closed
      }
    }
    await lab?.cleanup();
  });

  /** Sends from the public host to routerPublic:port until `receiver` (in the client namespace) gets it. */
  async function expectReachable(receiver: Socket, externalPort: number): Promise<RemoteInfo> {
    const sender = await own(socketIn(pub));
    const token = `hello-${randomInt(1e9)}`;
    let got: RemoteInfo | null = null;
    const onMsg = (msg: Buffer, rinfo: RemoteInfo): void => {
      if (msg.toString() === token) got = rinfo;
    };
    receiver.on('message', onMsg);
    try {
      return await waitFor(() => {
        sender.send(token, externalPort, ROUTER_PUBLIC);
        return got;
      }, { timeoutMs: 10_000, intervalMs: 200, what: `a datagram to ${ROUTER_PUBLIC}:${externalPort} to reach the client` });
    } finally {
      receiver.off('message', onMsg);
    }
  }

  async function mappingRules(port: number): Promise<string[]> {
    const { stdout } = await lab.run(router, ['nft', 'list', 'chain', 'inet', 'lab', 'prerouting_miniupnpd']);
    return stdout.split('\n').filter((l) => l.includes(`dport ${port}`));
  }

  for (const protocol of ['nat-pmp', 'pcp'] as const) {
    it(`${protocol}: maps a UDP port that the public side can reach, then releases it`, async () => {
      const internalPort = protocol === 'pcp' ? 41700 : 41641;
      const receiver = await own(socketIn(client, '0.0.0.0', internalPort));
      const m: PortMapping | null = await requestUdpMapping({
        gateway: LAN_GW, internalPort, lifetimeSec: 600, protocol, openSocket: () => socketIn(client),
      });
      expect(m, `no mapping; miniupnpd log:\n${lab.logTail(miniupnpd)}`).not.toBeNull();
      expect(m!.protocol).toBe(protocol);
      expect(Array.from(m!.externalAddress).join('.')).toBe(ROUTER_PUBLIC);
      expect(m!.externalPort).toBeGreaterThanOrEqual(1024);
      expect(m!.lifetimeSec).toBeGreaterThan(0);
      expect(m!.lifetimeSec).toBeLessThanOrEqual(600);
      expect(m!.gateway).toBe(LAN_GW);
      expect(await mappingRules(m!.externalPort)).toHaveLength(1);

      const from = await expectReachable(receiver, m!.externalPort);
      expect(from.address).toBe(PUBLIC_HOST); // DNAT only: the client sees the real sender

      await releaseUdpMapping(m!, internalPort, { openSocket: () => socketIn(client) });
      await waitFor(async () => (await mappingRules(m!.externalPort)).length === 0, { what: 'the mapping rule to go' });
    });
  }

  it('netcheck through the router: reflexive address, no hard NAT, and the mapping it got', async () => {
    const stun2 = await own(socketIn(pub, PUBLIC_HOST, 3479));
    serveStun(stun2);
    const sock = await own(socketIn(client));
    const localPort = sock.address().port;
    const nc = new Netcheck({
      servers: [makeEndpoint(ip4(PUBLIC_HOST), 3478), makeEndpoint(ip4(PUBLIC_HOST), 3479)],
      gateway: LAN_GW,
      localPort,
      send: (buf, to) => sock.send(buf, to.readUInt16BE(16), Array.from(to.subarray(12, 16)).join('.')),
      mapPort: (gw, port, ms, held) => requestUdpMapping({ gateway: gw, internalPort: port, timeoutMs: ms, lifetimeSec: 300, nonce: held?.nonce, openSocket: () => socketIn(client) }),
    });
    sock.on('message', (msg, rinfo) => nc.onResponse(msg, 0, msg.length, makeEndpoint(ip4(rinfo.address), rinfo.port), 0));
    const r = await nc.run();
    expect(r).toMatchObject({ udp: true, reflexive: `${ROUTER_PUBLIC}:${localPort}`, mappingVariesByDestination: false });
    expect(nc.portMapping?.protocol).toBe('pcp');
    expect(r.portMapping).toEqual({ protocol: 'pcp', external: `${ROUTER_PUBLIC}:${nc.portMapping!.externalPort}` });
    // The next run renews the same mapping (same nonce), which a PCP server requires.
    const first = nc.portMapping!;
    const again = await nc.run();
    expect(again.portMapping).toEqual(r.portMapping);
    expect(Buffer.from(nc.portMapping!.nonce!).equals(Buffer.from(first.nonce!))).toBe(true);
    await releaseUdpMapping(nc.portMapping!, localPort, { openSocket: () => socketIn(client) });
  });

  it('auto picks PCP on miniupnpd', async () => {
    const m = await requestUdpMapping({ gateway: LAN_GW, internalPort: 41800, lifetimeSec: 300, openSocket: () => socketIn(client) });
    expect(m?.protocol).toBe('pcp');
    await releaseUdpMapping(m!, 41800, { openSocket: () => socketIn(client) });
  });

  it('no server on the gateway: null', async () => {
    // The public host runs no NAT-PMP/PCP server.
    const m = await requestUdpMapping({ gateway: PUBLIC_HOST, internalPort: 41641, openSocket: () => socketIn(router) });
    expect(m).toBeNull();
  });

  it('reads the namespace default gateway from /proc/<pid>/net/route', async () => {
    const sleeper = lab.spawn(client, ['sleep', '30'], { name: 'sleep' });
    try {
      await waitFor(() => sleeper.pid !== undefined);
      // `ip netns exec` execs the command in place once it has entered the namespace.
      const gw = await waitFor(() => defaultGatewayV4(`/proc/${sleeper.pid}/net/route`) === LAN_GW, { what: 'the client namespace route' });
      expect(gw).toBe(true);
      expect(defaultGatewayV4(`/proc/${sleeper.pid}/net/route`)).toBe(LAN_GW);
    } finally {
      await lab.kill(sleeper, { graceMs: 100 });
    }
  });
});
