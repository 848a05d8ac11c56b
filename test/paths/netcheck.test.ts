import { socketIn } from '../fixtures/socket-in-netns.js';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { formatNetcheck, obtainNetcheck } from '../../src/cli/commands/netcheck.js';
import { ControlServer } from '../../src/daemon/control-server.js';
import { Lab, labUnavailableReasons } from '../../src/lab/index.js';
import { Netcheck, netcheckStandalone, parseHostPort, type NetcheckReport } from '../../src/paths/netcheck.js';
import { answerBindingRequest, buildBindingRequest, newTransactionId } from '../../src/net/stun.js';
import { makeEndpoint } from '../../src/net/endpoint.js';

const ip4 = (s: string): Uint8Array => Uint8Array.from(s.split('.').map(Number));
const ep = (addr: string, port: number): Buffer => makeEndpoint(ip4(addr), port);

/** A STUN server on `sock`; `lie` rewrites the source it reports (to fake a NAT). */
function serveStun(sock: Socket, lie?: (rinfo: RemoteInfo) => Buffer): void {
  sock.on('message', (msg, rinfo) => {
    const src = lie ? lie(rinfo) : ep(rinfo.address, rinfo.port);
    const answer = answerBindingRequest(msg, 0, msg.length, src, 0);
    if (answer) sock.send(answer, rinfo.port, rinfo.address);
  });
}

async function bound(addr = '127.0.0.1', port = 0): Promise<Socket> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(port, addr, r));
  return s;
}

/** Netcheck over `sock`, wired the way the daemon's socket layer wires it. */
function netcheckOn(sock: Socket, servers: Buffer[], extra: Partial<ConstructorParameters<typeof Netcheck>[0]> = {}): Netcheck {
  const nc = new Netcheck({
    servers,
    localPort: sock.address().port,
    send: (buf, to) => sock.send(buf, to.readUInt16BE(16), Array.from(to.subarray(12, 16)).join('.')),
    ...extra,
  });
  sock.on('message', (msg, rinfo) => nc.onResponse(msg, 0, msg.length, ep(rinfo.address, rinfo.port), 0));
  return nc;
}

describe('Netcheck on loopback', () => {
  const sockets: Socket[] = [];
  const open = async (port = 0): Promise<Socket> => {
    const s = await bound('127.0.0.1', port);
    sockets.push(s);
    return s;
  };
  afterEach(() => {
    for (const s of sockets.splice(0)) s.close();
  });

  it('one host, two ports, same mapping: UDP ok, reflexive, not a hard NAT, latency per server', async () => {
    const [a, b, client] = [await open(), await open(), await open()];
    serveStun(a);
    serveStun(b);
    const servers = [ep('127.0.0.1', a.address().port), ep('127.0.0.1', b.address().port)];
    const nc = netcheckOn(client, servers);
    const r = await nc.run();
    const me = `127.0.0.1:${client.address().port}`;
    expect(r).toMatchObject({ udp: true, reflexive: me, mappingVariesByDestination: false, portMapping: null });
    expect(r.stunServers).toEqual([`127.0.0.1:${a.address().port}`, `127.0.0.1:${b.address().port}`]);
    expect(Object.keys(r.latencyMs).sort()).toEqual([...r.stunServers].sort());
    for (const ms of Object.values(r.latencyMs)) expect(ms).toBeGreaterThanOrEqual(0);
    // Runs again cleanly (the daemon repeats it).
    expect((await nc.run()).reflexive).toBe(me);
  });

  it('servers that see different ports: mapping varies by destination', async () => {
    const [a, b, client] = [await open(), await open(), await open()];
    serveStun(a, () => ep('203.0.113.10', 40001));
    serveStun(b, () => ep('203.0.113.10', 40002));
    const r = await netcheckOn(client, [ep('127.0.0.1', a.address().port), ep('127.0.0.1', b.address().port)]).run();
    expect(r.mappingVariesByDestination).toBe(true);
    expect(r.reflexive).toBe('203.0.113.10:40001'); // the first server's view
  });

  it('different addresses count too; a single answer cannot tell', async () => {
    const [a, b, client] = [await open(), await open(), await open()];
    serveStun(a, () => ep('203.0.113.10', 40001));
    serveStun(b, () => ep('203.0.113.11', 40001));
    expect((await netcheckOn(client, [ep('127.0.0.1', a.address().port), ep('127.0.0.1', b.address().port)]).run()).mappingVariesByDestination).toBe(true);
    const one = await netcheckOn(client, [ep('127.0.0.1', a.address().port)]).run();
    expect(one.mappingVariesByDestination).toBeNull();
    expect(one.udp).toBe(true);
  });

  it('nobody answers: no UDP, nothing known; a silent server is listed without latency', async () => {
    const [silent, live, client] = [await open(), await open(), await open()];
    serveStun(live);
    const r = await netcheckOn(client, [ep('127.0.0.1', silent.address().port)], { timeoutMs: 700 }).run();
    expect(r).toEqual({ udp: false, reflexive: null, mappingVariesByDestination: null, portMapping: null, stunServers: [`127.0.0.1:${silent.address().port}`], latencyMs: {} });
    const mixed = await netcheckOn(client, [ep('127.0.0.1', silent.address().port), ep('127.0.0.1', live.address().port)], { timeoutMs: 700 }).run();
    expect(mixed.udp).toBe(true);
    expect(mixed.mappingVariesByDestination).toBeNull();
    expect(Object.keys(mixed.latencyMs)).toEqual([`127.0.0.1:${live.address().port}`]);
  });

  it('retransmits to a server that drops the first request', async () => {
    const [a, client] = [await open(), await open()];
    let seen = 0;
    a.on('message', (msg, rinfo) => {
      if (++seen === 1) return; // lost
      const answer = answerBindingRequest(msg, 0, msg.length, ep(rinfo.address, rinfo.port), 0);
      if (answer) a.send(answer, rinfo.port, rinfo.address);
    });
    const r = await netcheckOn(client, [ep('127.0.0.1', a.address().port)], { timeoutMs: 5000 }).run();
    expect(r.udp).toBe(true);
    expect(seen).toBeGreaterThanOrEqual(2);
  });

  it('onResponse claims only answers to its own probes', async () => {
    const [a, client] = [await open(), await open()];
    serveStun(a);
    const nc = netcheckOn(client, [ep('127.0.0.1', a.address().port)]);
    const src = ep('127.0.0.1', a.address().port);
    const foreign = answerBindingRequest(buildBindingRequest(newTransactionId()), 0, 28, src, 0)!;
    expect(nc.onResponse(foreign, 0, foreign.length, src, 0)).toBe(false);
    expect(nc.onResponse(Buffer.from('garbage'), 0, 7, src, 0)).toBe(false);
    const req = buildBindingRequest(newTransactionId());
    expect(nc.onResponse(req, 0, req.length, src, 0)).toBe(false); // a request is not an answer
    // Catch the probes it sends and answer one after the run: still ours.
    const sent: Buffer[] = [];
    const spy = new Netcheck({ servers: [src], localPort: 1, timeoutMs: 300, send: (buf) => sent.push(buf) });
    await spy.run();
    const late = answerBindingRequest(sent[0]!, 0, sent[0]!.length, ep('127.0.0.1', 9), 0)!;
    expect(spy.onResponse(late, 0, late.length, src, 0)).toBe(true);
  });

  it('reports the port mapping the gateway granted', async () => {
    const [a, client] = [await open(), await open()];
    serveStun(a);
    const asked: Array<[string, number]> = [];
    const nc = netcheckOn(client, [ep('127.0.0.1', a.address().port)], {
      gateway: '192.0.2.1',
      mapPort: async (gw, port) => {
        asked.push([gw, port]);
        return { protocol: 'pcp', externalAddress: ip4('203.0.113.5'), externalPort: 41641, lifetimeSec: 7200, gateway: gw };
      },
    });
    const r = await nc.run();
    expect(asked).toEqual([['192.0.2.1', client.address().port]]);
    expect(r.portMapping).toEqual({ protocol: 'pcp', external: '203.0.113.5:41641' });
    expect(nc.portMapping?.externalPort).toBe(41641);
    // A failing mapper is just "no mapping".
    const r2 = await netcheckOn(client, [ep('127.0.0.1', a.address().port)], { gateway: '192.0.2.1', mapPort: () => Promise.reject(new Error('boom')) }).run();
    expect(r2.portMapping).toBeNull();
  });

  it('netcheckStandalone: its own socket, servers as host:port', async () => {
    const [a, b] = [await open(), await open()];
    serveStun(a);
    serveStun(b);
    const r = await netcheckStandalone({ servers: [`127.0.0.1:${a.address().port}`, `localhost:${b.address().port}`], gateway: null, bindAddress: '127.0.0.1' });
    expect(r.udp).toBe(true);
    expect(r.reflexive).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(r.mappingVariesByDestination).toBe(false);
    await expect(netcheckStandalone({ servers: [] })).rejects.toMatchObject({ code: 'NETCHECK_NO_SERVERS' });
    await expect(netcheckStandalone({ servers: ['127.0.0.1:99999'], gateway: null })).rejects.toMatchObject({ code: 'NETCHECK_BAD_SERVER' });
    await expect(netcheckStandalone({ servers: ['[::1]:3478'], gateway: null })).rejects.toMatchObject({ code: 'NETCHECK_BAD_SERVER' });
  });

  it('parseHostPort', () => {
    expect(parseHostPort('198.51.100.1:3479')).toEqual({ host: '198.51.100.1', port: 3479 });
    expect(parseHostPort('stun.example')).toEqual({ host: 'stun.example', port: 3478 });
    expect(parseHostPort('[2001:db8::1]:5349')).toEqual({ host: '2001:db8::1', port: 5349 });
    expect(parseHostPort('2001:db8::1')).toEqual({ host: '2001:db8::1', port: 3478 });
    for (const bad of ['', ':3478', 'host:', 'host:0', 'host:65536', 'a b:1', 'host:12x', '[::1']) expect(parseHostPort(bad), bad).toBeNull();
  });
});

describe('agentvpn netcheck (command logic and output)', () => {
  const report: NetcheckReport = {
    udp: true, reflexive: '203.0.113.1:41641', mappingVariesByDestination: false,
    portMapping: { protocol: 'nat-pmp', external: '203.0.113.1:41641' },
    stunServers: ['203.0.113.2:3478', '203.0.113.2:3479'], latencyMs: { '203.0.113.2:3478': 0.42 },
  };
  let dir: string;
  const saved = process.env.AGENTVPN_RUN_DIR;
  const servers: ControlServer[] = [];
  const stunSockets: Socket[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'agentvpn-netcheck-'));
    process.env.AGENTVPN_RUN_DIR = join(dir, 'run');
  });
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.stop();
    for (const s of stunSockets.splice(0)) s.close();
  });
  afterAll(async () => {
    if (saved === undefined) delete process.env.AGENTVPN_RUN_DIR;
    else process.env.AGENTVPN_RUN_DIR = saved;
    await rm(dir, { recursive: true, force: true });
  });

  it('human output: short aligned lines', () => {
    const text = formatNetcheck(report, 'daemon', 'agentvpn0');
    expect(text.split('\n')).toEqual([
      'udp:           ok',
      'reflexive:     203.0.113.1:41641',
      'hard nat:      no',
      'port mapping:  nat-pmp 203.0.113.1:41641',
      'latency:       203.0.113.2:3478  0.42 ms',
      '               203.0.113.2:3479  no answer',
      'checked by:    the daemon of agentvpn0',
    ]);
    const blocked = formatNetcheck({ udp: false, reflexive: null, mappingVariesByDestination: null, portMapping: null, stunServers: ['203.0.113.2:3478'], latencyMs: {} });
    expect(blocked).toContain('udp:           no STUN server answered');
    expect(blocked).toContain('hard nat:      unknown');
    expect(blocked).toContain('port mapping:  none');
    expect(formatNetcheck({ ...report, mappingVariesByDestination: true })).toMatch(/hard nat: +yes/);
  });

  it('asks the daemon when one is up (passing --stun along)', async () => {
    const calls: unknown[] = [];
    const srv = new ControlServer('nc0', { netcheck: (p) => (calls.push(p), report) });
    await srv.start();
    servers.push(srv);
    expect(await obtainNetcheck({ interface: 'nc0' })).toEqual({ report, via: 'daemon' });
    await obtainNetcheck({ interface: 'nc0', stun: ['198.51.100.1:3478,198.51.100.1:3479'] });
    expect(calls).toEqual([{}, { servers: ['198.51.100.1:3478', '198.51.100.1:3479'] }]);
  });

  it('without a daemon: needs --stun, then runs standalone', async () => {
    await expect(obtainNetcheck({ interface: 'nc1' })).rejects.toMatchObject({ code: 'NETCHECK_NO_SERVERS' });
    const s = await bound();
    stunSockets.push(s);
    serveStun(s);
    const r = await obtainNetcheck({ interface: 'nc1', stun: [`127.0.0.1:${s.address().port}`], gateway: 'none' });
    expect(r.via).toBe('standalone');
    expect(r.report.udp).toBe(true);
  });

  it('an older daemon without the method: falls back to standalone when --stun is given', async () => {
    const srv = new ControlServer('nc2', { status: () => ({}) });
    await srv.start();
    servers.push(srv);
    await expect(obtainNetcheck({ interface: 'nc2' })).rejects.toMatchObject({ code: 'UNKNOWN_METHOD' });
    const s = await bound();
    stunSockets.push(s);
    serveStun(s);
    expect((await obtainNetcheck({ interface: 'nc2', stun: [`127.0.0.1:${s.address().port}`], gateway: 'none' })).via).toBe('standalone');
  });
});

// ------------------------------------------------------------------ real NATs in namespaces


const reasons = labUnavailableReasons(['ip', 'iptables']);
if (reasons.length > 0 && process.env.CI) {
  describe('netcheck behind real NATs', () => {
    it('lab prerequisites', () => {
      throw new Error(`cannot run: ${reasons.join('; ')}`);
    });
  });
}

describe.skipIf(reasons.length > 0)('netcheck behind real NATs (root)', () => {
  // agent 198.51.100.2 ── [router: iptables MASQUERADE] 203.0.113.1 ── 203.0.113.2 public (STUN on :3478 and :3479)
  const PUBLIC_HOST = '203.0.113.2';
  let lab: Lab;
  let agent: string;
  let router: string;
  const sockets: Socket[] = [];
  const own = async (p: Promise<Socket>): Promise<Socket> => {
    const s = await p;
    sockets.push(s);
    return s;
  };
  const servers = [ep(PUBLIC_HOST, 3478), ep(PUBLIC_HOST, 3479)];

  beforeAll(async () => {
    lab = new Lab();
    agent = await lab.addNamespace('nca');
    router = await lab.addRouter('ncr');
    const pub = await lab.addNamespace('ncp');
    await lab.connect(agent, router, { a: '198.51.100.2/24', b: '198.51.100.1/24', ifA: 'eth0', ifB: 'lan' });
    await lab.connect(router, pub, { a: '203.0.113.1/24', b: `${PUBLIC_HOST}/24`, ifA: 'wan', ifB: 'eth0' });
    await lab.addRoute(agent, 'default', '198.51.100.1');
    for (const port of [3478, 3479]) serveStun(await own(socketIn(pub, PUBLIC_HOST, port)));
  }, 60_000);

  afterAll(async () => {
    for (const s of sockets) s.close();
    await lab?.cleanup();
  });

  async function natMode(args: string[]): Promise<void> {
    await lab.iptables(router, ['-t', 'nat', '-F', 'POSTROUTING']);
    await lab.iptables(router, ['-t', 'nat', '-A', 'POSTROUTING', '-o', 'wan', '-j', 'MASQUERADE', ...args]);
  }

  it('plain MASQUERADE (endpoint-independent mapping): not a hard NAT', async () => {
    await natMode([]);
    const sock = await own(socketIn(agent));
    const r = await netcheckOn(sock, servers).run();
    expect(r.udp).toBe(true);
    expect(r.reflexive).toBe(`203.0.113.1:${sock.address().port}`); // conntrack keeps the free source port
    expect(r.mappingVariesByDestination).toBe(false);
  });

  it('MASQUERADE --random-fully (symmetric): the mapping varies by destination', async () => {
    await natMode(['--random-fully']);
    const sock = await own(socketIn(agent));
    const r = await netcheckOn(sock, servers).run();
    expect(r.udp).toBe(true);
    expect(r.reflexive).toMatch(/^203\.0\.113\.1:\d+$/);
    expect(r.mappingVariesByDestination).toBe(true);
  });

  it('outbound UDP dropped: no UDP', async () => {
    await natMode([]);
    await lab.iptables(router, ['-I', 'FORWARD', '-p', 'udp', '-i', 'lan', '-j', 'DROP']);
    try {
      const sock = await own(socketIn(agent));
      const r = await netcheckOn(sock, servers, { timeoutMs: 1000 }).run();
      expect(r).toMatchObject({ udp: false, reflexive: null, mappingVariesByDestination: null });
    } finally {
      await lab.iptables(router, ['-D', 'FORWARD', '-p', 'udp', '-i', 'lan', '-j', 'DROP']);
    }
  });
});
