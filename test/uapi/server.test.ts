import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { encodeKey } from '../../src/crypto/keys.js';
import { LIMITS, serializeGet } from '../../src/uapi/protocol.js';
import { UapiServer } from '../../src/uapi/server.js';
import { MemoryTarget } from './memory-target.js';

const silent = { info() {}, warn() {} };
let dir: string;
const servers: UapiServer[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentvpn-uapi-'));
});
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function serve(iface = 'uapit0', target = new MemoryTarget(), readOnly = false): Promise<{ server: UapiServer; target: MemoryTarget }> {
  const server = new UapiServer({ iface, target, log: silent, dir: join(dir, 'wireguard'), readOnly });
  servers.push(server);
  await server.start();
  return { server, target };
}

/** Sends raw bytes, returns everything the server answered until it closed or `until` matched. */
function exchange(path: string, data: string | Buffer, until?: RegExp, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    let got = '';
    const timer = setTimeout(() => { s.destroy(); resolve(got); }, timeoutMs);
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (until?.test(got)) { clearTimeout(timer); s.destroy(); resolve(got); }
    });
    s.on('close', () => { clearTimeout(timer); resolve(got); });
    s.on('error', (e) => { clearTimeout(timer); reject(e); });
    s.write(data);
  });
}

const ANSWER_END = /errno=-?\d+\n\n$/;
const serializeGetSize = (t: MemoryTarget) => serializeGet(t.state()).length;

async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('UAPI socket server', () => {
  it('is root-only: socket 0600 in a 0700 directory', async () => {
    const { server } = await serve();
    expect((await stat(server.path)).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'wireguard'))).mode & 0o777).toBe(0o700);
  });

  it('answers get and set, several requests on one connection', async () => {
    const { server, target } = await serve();
    const key = Buffer.from(publicKeyOf(generatePrivateKey())).toString('hex');
    const out = await exchange(server.path, `set=1\nlisten_port=5555\npublic_key=${key}\nallowed_ip=10.9.0.0/16\n\nget=1\n\n`, /errno=0\n\n[^]*errno=0\n\n$/);
    expect(out.startsWith('errno=0\n\n')).toBe(true);
    expect(out).toContain(`listen_port=5555\npublic_key=${key}\n`);
    expect(out).toContain('allowed_ip=10.9.0.0/16\n');
    expect(target.peers.size).toBe(1);
  });

  it('refuses a bad set with errno and keeps serving', async () => {
    const { server } = await serve();
    expect(await exchange(server.path, 'set=1\nbogus\n\n', ANSWER_END)).toBe('errno=-71\n\n');
    expect(await exchange(server.path, 'set=1\nlisten_port=x\n\n', ANSWER_END)).toBe('errno=-22\n\n');
    expect(await exchange(server.path, 'get=1\nx\n\n', ANSWER_END)).toBe('errno=-22\n\n');
    expect(await exchange(server.path, 'get=1\n\n', ANSWER_END)).toBe('errno=0\n\n');
  });

  it('closes on an unknown operation, as wireguard-go does', async () => {
    const { server } = await serve();
    expect(await exchange(server.path, 'hello=1\n')).toBe('');
    expect(server.stats.badOps).toBe(1);
  });

  it('read-only: set is EPERM, get works', async () => {
    const { server } = await serve('uapiro0', new MemoryTarget(), true);
    expect(await exchange(server.path, 'set=1\nlisten_port=1\n\n', ANSWER_END)).toBe(`errno=-1\n\n`);
    expect(await exchange(server.path, 'get=1\n\n', ANSWER_END)).toBe('errno=0\n\n');
  });

  it('bounds a request: an endless line or request is refused with EMSGSIZE, memory stays flat', async () => {
    const { server } = await serve();
    const longLine = await exchange(server.path, `set=1\nallowed_ip=${'1'.repeat(1 << 20)}`, ANSWER_END);
    expect(longLine).toBe('errno=-90\n\n');
    // A request of valid lines past the byte limit: 8 MB offered, refused once 4 MB were read.
    const rssBefore = process.memoryUsage().rss;
    const line = 'allowed_ip=10.0.0.0/8\n';
    const body = Buffer.from(`set=1\npublic_key=${'11'.repeat(32)}\n${line.repeat(Math.ceil((2 * LIMITS.requestBytes) / line.length))}`);
    const big = await exchange(server.path, body, ANSWER_END, 20_000);
    const grewMb = (process.memoryUsage().rss - rssBefore) / 1e6;
    console.log(`oversize request: ${(body.length / 1e6).toFixed(1)} MB sent -> "${big.trim()}", server RSS grew ${grewMb.toFixed(1)} MB, oversize count ${server.stats.oversize}`);
    expect(big).toBe('errno=-90\n\n');
    expect(server.stats.oversize).toBe(2);
    expect(await exchange(server.path, 'get=1\n\n', ANSWER_END)).toBe('errno=0\n\n');
  });

  it('random bytes never crash it; it answers afterwards', async () => {
    const { server } = await serve();
    for (let i = 0; i < 100; i++) {
      const junk = Buffer.alloc(1 + Math.floor(Math.random() * 300));
      for (let j = 0; j < junk.length; j++) junk[j] = Math.random() < 0.1 ? 10 : Math.floor(Math.random() * 256);
      const prefix = i % 3 === 0 ? 'set=1\n' : i % 3 === 1 ? 'get=1\n' : '';
      await exchange(server.path, Buffer.concat([Buffer.from(prefix), junk]), ANSWER_END, 200);
    }
    expect(await exchange(server.path, 'get=1\n\n', ANSWER_END)).toBe('errno=0\n\n');
    console.log(`fuzz: 100 connections of junk; stats ${JSON.stringify(server.stats)}`);
  });

  it('holds at most 32 connections; idle ones cost no more than that', async () => {
    const { server } = await serve('uapiconn0');
    const held = await Promise.all(Array.from({ length: 40 }, () => new Promise<import('node:net').Socket>((resolve) => {
      const s = connect(server.path, () => resolve(s));
      s.on('error', () => {});
    })));
    await waitUntil(() => server.stats.connectionsShed >= 8);
    console.log(`40 idle connections: ${40 - server.stats.connectionsShed} held, ${server.stats.connectionsShed} shed`);
    expect(server.stats.connectionsShed).toBe(8);
    for (const s of held) s.destroy();
    await waitUntil(async () => (await exchange(server.path, 'get=1\n\n', ANSWER_END, 500)) === 'errno=0\n\n');
  });

  it('bounds what all connections hold together: four full-size requests at once, the fifth is refused', async () => {
    const { server } = await serve('uapitotal0');
    const line = 'allowed_ip=10.0.0.0/8\n';
    const nearlyFull = `set=1\npublic_key=${'22'.repeat(32)}\n${line.repeat(Math.floor((LIMITS.requestBytes - 200) / line.length))}`;
    const open: import('node:net').Socket[] = [];
    for (let i = 0; i < 4; i++) {
      const s = connect(server.path);
      s.on('error', () => {});
      open.push(s);
      await new Promise<void>((resolve) => s.write(nearlyFull, () => resolve()));
    }
    await waitUntil(() => server.bufferedBytes > 3.9 * LIMITS.requestBytes);
    const fifth = await exchange(server.path, nearlyFull, ANSWER_END, 5000);
    console.log(`4 unfinished requests of ${(nearlyFull.length / 1e6).toFixed(1)} MB held (${(server.bufferedBytes / 1e6).toFixed(1)} MB); a fifth: "${fifth.trim()}"`);
    expect(fifth).toBe('errno=-90\n\n');
    for (const s of open) s.destroy();
    await waitUntil(() => server.bufferedBytes === 0);
  });

  it('a client that never reads its answers gets no more answered', async () => {
    const target = new MemoryTarget();
    const { server } = await serve('uapiread0', target);
    for (let i = 0; i < 2000; i++) target.upsertPeer({ publicKey: Buffer.alloc(32, 0).fill(i & 255, 0, 1).fill(i >> 8, 1, 2), remove: false, updateOnly: false, allowedIps: [] });
    const s = connect(server.path);
    s.on('error', () => {});
    s.pause(); // reads nothing
    s.write('get=1\n\n'.repeat(200));
    await new Promise((r) => setTimeout(r, 1500));
    const answered = server.stats.gets;
    console.log(`200 gets pipelined by a client that does not read: ${answered} answered (${(serializeGetSize(target) / 1e3).toFixed(0)} kB each)`);
    expect(answered).toBeLessThan(20);
    s.destroy();
  });

  it('refuses to start over a live socket, replaces a stale one', async () => {
    const { server } = await serve('uapidup0');
    const second = new UapiServer({ iface: 'uapidup0', target: new MemoryTarget(), log: silent, dir: join(dir, 'wireguard') });
    await expect(second.start()).rejects.toMatchObject({ code: 'UAPI_SOCKET_IN_USE' });
    await server.stop();
    servers.splice(servers.indexOf(server), 1);
    await serve('uapidup0'); // the old socket is gone (unlinked on close): starts cleanly
  });
});

/** Runs wg(8) with /run/wireguard bound to our test directory, in a private mount namespace. */
function wg(args: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const script = 'mount --bind "$1" /run/wireguard && shift && exec wg "$@"';
    const child = execFile('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', join(dir, 'wireguard'), ...args], { timeout: 10_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    if (stdin !== undefined) child.stdin!.end(stdin);
  });
}

const haveWg = await new Promise<boolean>((r) => execFile('wg', ['--version'], (e) => r(!e)));
const root = process.getuid?.() === 0;

describe.skipIf(!(haveWg && root) && !process.env.CI)('wg(8) against the UAPI server', () => {
  it('wg set, show dump, showconf and syncconf', async () => {
    const { execFileSync } = await import('node:child_process');
    execFileSync('mkdir', ['-p', '/run/wireguard']); // the mount point (wireguard-go labs use it too)
    const { target } = await serve('uapiwg0');
    const priv = generatePrivateKey();
    const peer = encodeKey(publicKeyOf(generatePrivateKey()));
    const keyFile = join(dir, 'priv.key');
    await writeFile(keyFile, encodeKey(priv) + '\n', { mode: 0o600 });
    const r = await wg(['set', 'uapiwg0', 'private-key', keyFile, 'listen-port', '51999', 'peer', peer,
      'endpoint', '192.0.2.9:51820', 'allowed-ips', '100.64.0.9/32,fd00::9/128', 'persistent-keepalive', '25']);
    expect(r.stderr).toBe('');
    expect(target.listenPort).toBe(51999);
    const dump = (await wg(['show', 'uapiwg0', 'dump'])).stdout.trim().split('\n').map((l) => l.split('\t'));
    expect(dump[0]).toEqual([encodeKey(priv), encodeKey(publicKeyOf(priv)), '51999', 'off']);
    expect(dump[1]).toEqual([peer, '(none)', '192.0.2.9:51820', '100.64.0.9/32,fd00::9/128', '0', '0', '0', '25']);

    const conf = (await wg(['showconf', 'uapiwg0'])).stdout;
    expect(conf).toContain(`[Peer]\nPublicKey = ${peer}\nAllowedIPs = 100.64.0.9/32, fd00::9/128\nEndpoint = 192.0.2.9:51820\nPersistentKeepalive = 25`);
    // syncconf with the peer's allowed IPs changed and a second peer: the result is exactly the file.
    const peer2 = encodeKey(publicKeyOf(generatePrivateKey()));
    const confFile = join(dir, 'sync.conf');
    await writeFile(confFile, conf.replace('100.64.0.9/32, fd00::9/128', '100.64.1.0/24') + `\n[Peer]\nPublicKey = ${peer2}\nAllowedIPs = 100.64.2.0/24\n`);
    expect((await wg(['syncconf', 'uapiwg0', confFile])).stderr).toBe('');
    const after = (await wg(['showconf', 'uapiwg0'])).stdout;
    expect(after).toContain('AllowedIPs = 100.64.1.0/24\n');
    expect(after).toContain(`PublicKey = ${peer2}\nAllowedIPs = 100.64.2.0/24`);
    expect(target.peers.size).toBe(2);
    // A bad request through wg shows the errno as wg reports it.
    target.takenPorts.add(4000);
    const bad = await wg(['set', 'uapiwg0', 'listen-port', '4000']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/Address already in use/);
    console.log(`wg(8) round trip ok; wg on EADDRINUSE says: ${bad.stderr.trim()}`);
  });
});
