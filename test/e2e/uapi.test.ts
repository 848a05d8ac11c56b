import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AGENTVPN_BIN, Lab, isPidAlive, renderWgQuickConfig, runCommand, sleep, startAgentVpn, startHubFleet, startWireguardGo, waitFor, wgKeyPair,
  type HubFleet, type WireguardGo,
} from '../../src/lab/index.js';
import { startWgUserspace, wgAt, withUapiDir, type WgUserspace } from '../../src/lab/wg-userspace.js';
import type { DeviceStatus } from '../../src/daemon/status-types.js';
import { labReady } from './checks.js';
import { makePair, wgGenPsk, type Pair } from './pair.js';

/**
 * wg(8) and wg-quick drive agentvpn as they drive wireguard-go: side A is `agentvpn wg-userspace`
 * (later wg-quick with agentvpn as its userspace implementation, then `agentvpn up`), configured
 * only through the UAPI; side B is wireguard-go. The steps run in order on one lab.
 */
const IFACE = 'agentvpn0';

async function ping(pair: Pair, ns: string, dst: string, count = 2, waitS = 3): Promise<boolean> {
  return (await pair.lab.exec(ns, ['ping', '-n', '-q', '-c', String(count), '-W', String(waitS), dst])).code === 0;
}

/** `wg show IFACE dump`: the interface line, then one row per peer, fields by name. */
function parseDump(text: string) {
  const [dev, ...peers] = text.trim().split('\n').map((l) => l.split('\t'));
  return {
    privateKey: dev[0], publicKey: dev[1], listenPort: Number(dev[2]), fwmark: dev[3],
    peers: peers.map((p) => ({
      publicKey: p[0], presharedKey: p[1], endpoint: p[2], allowedIps: p[3], latestHandshake: Number(p[4]),
      rxBytes: Number(p[5]), txBytes: Number(p[6]), persistentKeepalive: p[7],
    })),
  };
}

/** Dump and status, taken back to back while the tunnel is idle, must say the same. */
function expectDumpMatchesStatus(dumpText: string, status: DeviceStatus): void {
  const dump = parseDump(dumpText);
  expect(dump.publicKey).toBe(status.publicKey);
  expect(dump.listenPort).toBe(status.listenPort);
  expect(dump.peers.map((p) => p.publicKey).sort()).toEqual(status.peers.map((p) => p.publicKey).sort());
  for (const p of dump.peers) {
    const s = status.peers.find((q) => q.publicKey === p.publicKey)!;
    expect(p.endpoint).toBe(s.endpoint ?? '(none)');
    expect(p.allowedIps.split(',').sort()).toEqual([...s.allowedIps].sort());
    expect(p.latestHandshake).toBe(s.latestHandshake ? Math.floor(s.latestHandshake / 1000) : 0);
    expect(p.rxBytes).toBe(s.rxBytes);
    expect(p.txBytes).toBe(s.txBytes);
    expect(p.persistentKeepalive).toBe(s.persistentKeepalive ? String(s.persistentKeepalive) : 'off');
  }
}

/** `agentvpn status --json`; one retry covers a dist/ being rebuilt under us by a parallel build. */
async function statusOf(cli: (args: string[]) => Promise<{ stdout: string; stderr: string }>, iface = IFACE): Promise<DeviceStatus> {
  let last = '';
  for (let attempt = 0; attempt < 2; attempt++) {
    const r = await cli(['status', '--json', '--interface', iface]);
    try {
      return JSON.parse(r.stdout) as DeviceStatus;
    } catch {
      last = `${r.stdout}${r.stderr}`.slice(0, 2000);
      await sleep(500);
    }
  }
  throw new Error(`agentvpn status --json gave no JSON: ${last}`);
}

/** B's rx bytes from A, as wireguard-go counts them. */
async function rxAtB(b: WireguardGo, keyA: string): Promise<number> {
  const line = (await b.wg(['show', b.ifname, 'transfer'])).stdout.split('\n').find((l) => l.startsWith(keyA))!;
  return Number(line.split('\t')[1]);
}

async function endpointAt(show: (args: string[]) => Promise<{ stdout: string }>, iface: string, key: string): Promise<string> {
  const line = (await show(['show', iface, 'endpoints'])).stdout.split('\n').find((l) => l.startsWith(key)) ?? '';
  return line.split('\t')[1] ?? '';
}

/** showconf text as a comparable shape: the interface lines, and each peer's lines (AllowedIPs as a set), sorted. */
function confShape(text: string): string[][] {
  const line = (l: string) => (l.startsWith('AllowedIPs = ') ? `AllowedIPs = ${l.slice(13).split(/,\s*/).sort().join(', ')}` : l);
  return text.split(/\n(?=\[)/)
    .map((s) => s.trim().split('\n').filter((l) => l && !l.startsWith('#')).map(line).sort())
    .sort((a, b) => a.join().localeCompare(b.join()));
}

describe.runIf(labReady(['ip', 'ping', 'wireguard-go', 'wg', 'wg-quick']))('wg(8) and wg-quick drive agentvpn through the UAPI', () => {
  let pair: Pair;
  let a: WgUserspace;
  let b: WireguardGo;
  let portB = 51821;
  const startedPids: number[] = [];

  beforeAll(async () => {
    pair = await makePair();
    b = await startWireguardGo(pair.lab, pair.endpoints.nsB, pair.configB({ withEndpoint: false }), 'wg0');
    a = await startWgUserspace(pair.lab, pair.endpoints.nsA, IFACE);
    startedPids.push(a.pid);
  });

  afterAll(async () => {
    for (const pid of startedPids) if (isPidAlive(pid)) process.kill(pid, 'SIGKILL');
    await pair?.lab.cleanup();
  });

  it('starts like wireguard-go: no key, no address, no route, link down', async () => {
    const dump = parseDump((await a.wg(['show', IFACE, 'dump'])).stdout);
    expect(dump.privateKey).toBe('(none)');
    expect(dump.peers).toEqual([]);
    const link = JSON.parse((await pair.lab.run(pair.endpoints.nsA, ['ip', '-j', 'addr', 'show', 'dev', IFACE])).stdout)[0];
    expect(link.addr_info).toEqual([]);
    expect(link.flags).not.toContain('UP');
    expect(link.mtu).toBe(1420);
    expect((await pair.lab.run(pair.endpoints.nsA, ['ip', 'route', 'show', 'dev', IFACE])).stdout.trim()).toBe('');
  });

  it('configured with wg set, passes traffic; wg show dump agrees with agentvpn status --json', async () => {
    await a.configure(pair.configA({ withEndpoint: true }));
    expect(await ping(pair, pair.endpoints.nsA, pair.endpoints.v4B)).toBe(true);
    expect(await ping(pair, pair.endpoints.nsA, pair.endpoints.v6B)).toBe(true);
    const dump = (await a.wg(['show', IFACE, 'dump'])).stdout;
    const status = await statusOf((args) => a.cli(args));
    console.log(`dump: ${dump.trim().split('\n')[1]}`);
    expectDumpMatchesStatus(dump, status);
    expect(parseDump(dump).privateKey).toBe(pair.keyA.privateKey);
  });

  it('persistent keepalive set with wg set starts at once', async () => {
    const keyA = pair.keyA.publicKey;
    const before0 = await rxAtB(b, keyA);
    await sleep(3000);
    const idle = (await rxAtB(b, keyA)) - before0;
    await a.wg(['set', IFACE, 'peer', pair.keyB.publicKey, 'persistent-keepalive', '1']);
    const before1 = await rxAtB(b, keyA);
    await sleep(3000);
    const withKeepalive = (await rxAtB(b, keyA)) - before1;
    console.log(`keepalives (32 B) seen by wireguard-go in 3 s: keepalive off ${idle / 32}, persistent-keepalive 1: ${withKeepalive / 32}`);
    expect(withKeepalive / 32).toBeGreaterThanOrEqual(2);
    expect(withKeepalive).toBeGreaterThan(idle);
    await a.wg(['set', IFACE, 'peer', pair.keyB.publicKey, 'persistent-keepalive', 'off']);
    expect((await a.wg(['show', IFACE, 'persistent-keepalive'])).stdout).toContain('\toff');
  });

  it('a preshared key set with wg set is used by the next handshake', async () => {
    const psk = await wgGenPsk();
    const pskFile = join(pair.lab.dir, 'uapi-psk');
    writeFileSync(pskFile, psk + '\n', { mode: 0o600 });
    // Re-adding the peer drops its session, so the next packet needs a handshake with the PSK.
    await a.wg(['set', IFACE, 'peer', pair.keyB.publicKey, 'remove']);
    await a.wg(['set', IFACE, 'peer', pair.keyB.publicKey, 'preshared-key', pskFile, 'endpoint', `${pair.underlayB}:${portB}`,
      'allowed-ips', `${pair.endpoints.v4B}/32,${pair.endpoints.v6B}/128`]);
    expect((await a.wg(['show', IFACE, 'preshared-keys'])).stdout).toContain(psk);
    const mismatched = await ping(pair, pair.endpoints.nsA, pair.endpoints.v4B, 2, 2);
    await b.wg(['set', 'wg0', 'peer', pair.keyA.publicKey, 'preshared-key', pskFile]);
    const t0 = Date.now();
    await waitFor(() => ping(pair, pair.endpoints.nsA, pair.endpoints.v4B, 1, 1), { timeoutMs: 15_000, what: 'ping with the PSK on both sides' });
    console.log(`PSK on agentvpn only: ping ${mismatched ? 'passed' : 'failed'}; PSK on both: ping passed after ${Date.now() - t0} ms`);
    expect(mismatched).toBe(false);
  });

  it('listen port, endpoint and roaming behave as with wireguard-go', async () => {
    const showA = (args: string[]) => a.wg(args);
    const showB = (args: string[]) => b.wg(args);
    // agentvpn moves its port: wireguard-go follows the authenticated packets (roaming).
    await a.wg(['set', IFACE, 'listen-port', '51830']);
    expect((await a.wg(['show', IFACE, 'listen-port'])).stdout.trim()).toBe('51830');
    expect(await ping(pair, pair.endpoints.nsA, pair.endpoints.v4B)).toBe(true);
    expect(await endpointAt(showB, 'wg0', pair.keyA.publicKey)).toBe(`${pair.underlayA}:51830`);
    // wireguard-go moves its port: agentvpn follows the same way.
    portB = 51831;
    await b.wg(['set', 'wg0', 'listen-port', String(portB)]);
    expect(await ping(pair, pair.endpoints.nsB, pair.endpoints.v4A)).toBe(true);
    expect(await endpointAt(showA, IFACE, pair.keyB.publicKey)).toBe(`${pair.underlayB}:${portB}`);
    // An endpoint set with wg set is in force at once (before any packet).
    await pair.lab.run(pair.endpoints.nsB, ['ip', 'addr', 'add', '192.0.2.3/24', 'dev', 'eth0']);
    await a.wg(['set', IFACE, 'peer', pair.keyB.publicKey, 'endpoint', `192.0.2.3:${portB}`]);
    expect(await endpointAt(showA, IFACE, pair.keyB.publicKey)).toBe(`192.0.2.3:${portB}`);
    const rx = await rxAtB(b, pair.keyA.publicKey);
    expect(await ping(pair, pair.endpoints.nsA, pair.endpoints.v4B)).toBe(true);
    expect(await rxAtB(b, pair.keyA.publicKey)).toBeGreaterThan(rx);
    // A port that is taken is refused, and the old one stays.
    const taken = pair.lab.spawn(pair.endpoints.nsA, ['python3', '-c', 'import socket,time;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.bind(("::",51840));time.sleep(60)'], { name: 'port-taker' });
    await waitFor(async () => (await pair.lab.exec(pair.endpoints.nsA, ['ss', '-Hlun', 'sport = :51840'])).stdout.trim() !== '', { timeoutMs: 5000, what: 'port taker' });
    const refused = await a.wg(['set', IFACE, 'listen-port', '51840'], { check: false });
    await pair.lab.kill(taken);
    console.log(`wg set listen-port on a taken port: ${refused.stderr.trim()}`);
    expect(refused.code).not.toBe(0);
    expect((await a.wg(['show', IFACE, 'listen-port'])).stdout.trim()).toBe('51830');
    expect(await ping(pair, pair.endpoints.nsA, pair.endpoints.v4B)).toBe(true);
  });

  it('wg showconf / wg syncconf round trip without dropping the session', async () => {
    const original = (await a.wg(['showconf', IFACE])).stdout;
    const handshakesBefore = (await statusOf((args) => a.cli(args))).peers[0].handshakes;
    const extra = await wgKeyPair();
    const changed = original.replace(`AllowedIPs = ${pair.endpoints.v4B}/32`, `AllowedIPs = ${pair.endpoints.v4B}/32, 10.99.0.0/16`)
      + `\n[Peer]\nPublicKey = ${extra.publicKey}\nAllowedIPs = 100.64.9.0/24\nEndpoint = 192.0.2.77:51820\n`;
    const file = join(pair.lab.dir, 'uapi-sync.conf');
    writeFileSync(file, changed, { mode: 0o600 });
    await a.wg(['syncconf', IFACE, file]);
    const after = (await a.wg(['showconf', IFACE])).stdout;
    expect(confShape(after)).toEqual(confShape(changed));
    writeFileSync(file, original, { mode: 0o600 });
    await a.wg(['syncconf', IFACE, file]);
    expect(confShape((await a.wg(['showconf', IFACE])).stdout)).toEqual(confShape(original));
    expect(await ping(pair, pair.endpoints.nsA, pair.endpoints.v4B)).toBe(true);
    const handshakesAfter = (await statusOf((args) => a.cli(args))).peers[0].handshakes;
    console.log(`syncconf: ${confShape(changed).length - 1} peers applied and reverted; handshakes ${handshakesBefore} -> ${handshakesAfter}`);
    expect(handshakesAfter).toBe(handshakesBefore);
  });

  it('moved into another namespace, the interface keeps passing traffic; deleting it ends the process', async () => {
    const nsC = await pair.lab.addNamespace('c');
    await pair.lab.run(pair.endpoints.nsA, ['ip', 'link', 'set', 'dev', IFACE, 'netns', nsC]);
    const cfg = pair.configA({ withEndpoint: true });
    for (const addr of cfg.addresses) await pair.lab.run(nsC, ['ip', 'addr', 'add', addr, 'dev', IFACE]);
    await pair.lab.run(nsC, ['ip', 'link', 'set', 'dev', IFACE, 'mtu', '1420', 'up']);
    expect(await ping(pair, nsC, pair.endpoints.v4B)).toBe(true);
    expect(await ping(pair, nsC, pair.endpoints.v6B)).toBe(true);
    expect(await ping(pair, pair.endpoints.nsB, pair.endpoints.v4A)).toBe(true);
    expect(existsSync(a.socketPath)).toBe(true);
    const t0 = Date.now();
    await pair.lab.run(nsC, ['ip', 'link', 'del', 'dev', IFACE]);
    const exit = await Promise.race([a.process.exited, sleep(10_000).then(() => null)]);
    console.log(`interface deleted in the other namespace: process exited after ${Date.now() - t0} ms (${JSON.stringify(exit)})`);
    expect(exit).not.toBeNull();
    expect(exit!.code).toBe(0);
    expect(existsSync(a.socketPath)).toBe(false);
  });

  it('wg-quick up/down with WG_QUICK_USERSPACE_IMPLEMENTATION=agentvpn wg-userspace', async () => {
    const nsA = pair.endpoints.nsA;
    await b.wg(['set', 'wg0', 'peer', pair.keyA.publicKey, 'preshared-key', '/dev/null']); // the configs below have no PSK
    // wg-quick runs the implementation as one word: a wrapper script stands for "agentvpn wg-userspace".
    const wrapper = join(pair.lab.dir, 'agentvpn-wg-userspace');
    writeFileSync(wrapper, `#!/bin/sh\nexec "${process.execPath}" "${AGENTVPN_BIN}" wg-userspace "$@"\n`);
    chmodSync(wrapper, 0o755);
    const conf = join(pair.lab.dir, 'wgq0.conf');
    const cfg = pair.configA({ withEndpoint: true });
    cfg.peers[0].endpoint = `${pair.underlayB}:${portB}`;
    writeFileSync(conf, renderWgQuickConfig(cfg), { mode: 0o600 });
    const uapiDir = join(pair.lab.dir, 'wg-quick-uapi');
    const runDir = join(pair.lab.dir, 'wg-quick-run');
    mkdirSync(uapiDir, { mode: 0o700 });
    const env = { ...process.env, WG_QUICK_USERSPACE_IMPLEMENTATION: wrapper, AGENTVPN_WG_RUN_DIR: uapiDir, AGENTVPN_RUN_DIR: runDir };
    const up = await runCommand(withUapiDir(nsA, uapiDir, ['wg-quick', 'up', conf]), { env, timeoutMs: 30_000 });
    expect(up.code, up.stderr).toBe(0);
    const status = await statusOf((args) => pair.lab.exec(nsA, [process.execPath, AGENTVPN_BIN, ...args], { env }), 'wgq0');
    startedPids.push(status.pid);
    expect(await ping(pair, nsA, pair.endpoints.v4B)).toBe(true);
    expect(await ping(pair, nsA, pair.endpoints.v6B)).toBe(true);
    expectDumpMatchesStatus((await wgAt(nsA, uapiDir, ['show', 'wgq0', 'dump'])).stdout,
      await statusOf((args) => pair.lab.exec(nsA, [process.execPath, AGENTVPN_BIN, ...args], { env }), 'wgq0'));
    const down = await runCommand(withUapiDir(nsA, uapiDir, ['wg-quick', 'down', conf]), { env, timeoutMs: 30_000 });
    expect(down.code, down.stderr).toBe(0);
    await waitFor(() => !isPidAlive(status.pid), { timeoutMs: 10_000, what: 'wg-userspace to exit after wg-quick down' });
    console.log(`wg-quick up: ${up.stderr.trim().split('\n').length} steps; down ended pid ${status.pid}`);
  });

  it('an `agentvpn up` daemon answers wg show too', async () => {
    const cfg = pair.configA({ withEndpoint: true });
    cfg.peers[0].endpoint = `${pair.underlayB}:${portB}`;
    const ours = await startAgentVpn(pair.lab, pair.endpoints.nsA, cfg, IFACE);
    startedPids.push(ours.pid);
    expect(await ping(pair, pair.endpoints.nsA, pair.endpoints.v4B)).toBe(true);
    const uapiDir = join(ours.runDir, 'wireguard');
    const dump = (await wgAt(pair.endpoints.nsA, uapiDir, ['show', IFACE, 'dump'])).stdout;
    expectDumpMatchesStatus(dump, await statusOf((args) => ours.cli(args)));
    expect((await wgAt(pair.endpoints.nsA, uapiDir, ['show', 'interfaces'])).stdout.trim()).toBe(IFACE);
    await ours.stop();
  });
});

describe.runIf(labReady(['ip', 'curl', 'wg']))('fleet daemons answer wg show, read-only', () => {
  let lab: Lab;
  let fleet: HubFleet;

  beforeAll(async () => {
    lab = new Lab();
    fleet = await startHubFleet(lab, ['alpha', 'beta']);
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('wg show lists the fleet peers as status does; wg set is refused with EPERM', async () => {
    const alpha = fleet.agents.alpha;
    const uapiDir = join(alpha.runDir, 'wireguard');
    const status = await alpha.json<DeviceStatus>(['status']);
    const dump = parseDump((await wgAt(alpha.ns, uapiDir, ['show', IFACE, 'dump'])).stdout);
    expect(dump.publicKey).toBe(status.publicKey);
    expect(dump.listenPort).toBe(status.listenPort);
    expect(dump.peers.map((p) => [p.publicKey, p.allowedIps.split(',').sort()])).toEqual(status.peers.map((p) => [p.publicKey, [...p.allowedIps].sort()]));
    const refused = await wgAt(alpha.ns, uapiDir, ['set', IFACE, 'listen-port', '5555'], { check: false });
    console.log(`fleet daemon, wg set: ${refused.stderr.trim()}`);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/Operation not permitted/);
    expect((await alpha.json<DeviceStatus>(['status'])).listenPort).toBe(status.listenPort);
  });
});
