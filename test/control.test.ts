import { spawn } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentVpnError } from '../src/errors.js';
import { ControlServer, MAX_REQUEST_BYTES } from '../src/daemon/control-server.js';
import { callDaemon, isDaemonAnswering } from '../src/daemon/control-client.js';
import { controlSocketPath, logFilePath, pidFilePath, runDir } from '../src/daemon/paths.js';
import { validateInterfaceName } from '../src/tun/interface-name.js';

let base: string;
const servers: ControlServer[] = [];
const savedRunDir = process.env.AGENTVPN_RUN_DIR;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'agentvpn-control-'));
  process.env.AGENTVPN_RUN_DIR = join(base, 'run'); // does not exist yet: start() creates it
});
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});
afterAll(async () => {
  if (savedRunDir === undefined) delete process.env.AGENTVPN_RUN_DIR;
  else process.env.AGENTVPN_RUN_DIR = savedRunDir;
  await rm(base, { recursive: true, force: true });
});

function server(iface = 'test0', handlers: ConstructorParameters<typeof ControlServer>[1] = {}): ControlServer {
  const s = new ControlServer(iface, {
    status: () => ({ interface: iface, peers: [] }),
    echo: (p) => p,
    nothing: () => undefined,
    refuse: () => { throw new AgentVpnError('NOPE', 'refused', 'ask nicely'); },
    crash: async () => { throw new Error('kaput'); },
    ...handlers,
  });
  servers.push(s);
  return s;
}

/** Send raw bytes, collect `count` response lines. */
function raw(iface: string, data: string | Buffer, count: number): Promise<Array<Record<string, unknown>>> {
  return new Promise((resolve, reject) => {
    const sock = connect(controlSocketPath(iface));
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (c: string) => {
      buf += c;
      const lines = buf.split('\n').filter(Boolean);
      if (buf.endsWith('\n') && lines.length >= count) {
        sock.destroy();
        resolve(lines.map((l) => JSON.parse(l) as Record<string, unknown>));
      }
    });
    sock.on('error', reject);
    sock.write(data);
  });
}

async function codeOf(p: Promise<unknown>): Promise<AgentVpnError> {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e).toBeInstanceOf(AgentVpnError);
  return e as AgentVpnError;
}

describe('paths', () => {
  it('puts socket, pid and log in the run dir and validates names', () => {
    expect(runDir()).toBe(join(base, 'run'));
    expect(controlSocketPath('wg0')).toBe(join(base, 'run', 'wg0.sock'));
    expect(pidFilePath('wg0')).toBe(join(base, 'run', 'wg0.pid'));
    expect(logFilePath('wg0')).toBe(join(base, 'run', 'wg0.log'));
    expect(validateInterfaceName('a.b_c-15chars12')).toBe('a.b_c-15chars12');
    for (const bad of ['', 'x'.repeat(16), '../etc', 'a b', '..', 'wg/0']) {
      expect(() => controlSocketPath(bad)).toThrow(expect.objectContaining({ code: 'BAD_INTERFACE_NAME' }));
    }
  });

  it('defaults to /run/agentvpn', () => {
    const saved = process.env.AGENTVPN_RUN_DIR;
    delete process.env.AGENTVPN_RUN_DIR;
    expect(controlSocketPath('agentvpn0')).toBe('/run/agentvpn/agentvpn0.sock');
    process.env.AGENTVPN_RUN_DIR = saved;
  });
});

describe('control server and client', () => {
  it('round-trips results and errors', async () => {
    const s = server();
    await s.start();
    expect((await stat(runDir())).mode & 0o777).toBe(0o755);
    expect((await stat(s.path)).mode & 0o777).toBe(0o600);
    expect(await callDaemon('test0', 'status')).toEqual({ interface: 'test0', peers: [] });
    expect(await callDaemon('test0', 'echo', { a: [1, 'é'] })).toEqual({ a: [1, 'é'] });
    expect(await callDaemon('test0', 'nothing')).toBeNull();
    expect(await codeOf(callDaemon('test0', 'refuse'))).toMatchObject({ code: 'NOPE', message: 'refused', hint: 'ask nicely' });
    const internal = await codeOf(callDaemon('test0', 'crash'));
    expect(internal.code).toBe('INTERNAL');
    expect(internal.message).toMatch(/kaput/);
    const unknown = await codeOf(callDaemon('test0', 'toString'));
    expect(unknown.code).toBe('UNKNOWN_METHOD');
    expect(unknown.hint).toMatch(/status/);
    expect(s.stats).toEqual({ requests: 5, badRequests: 1 });
  });

  it('answers malformed input with errors and keeps serving', async () => {
    const s = server();
    await s.start();
    const res = await raw('test0', [
      '{not json',
      '[]',
      '{"id":7}',
      '{"id":8,"method":"nope"}',
      '',
      '{"id":9,"method":"echo","params":{"x":1}}',
    ].join('\n') + '\n', 5);
    expect(res.map((r) => [r.id, r.ok, r.code])).toEqual([
      [null, false, 'BAD_REQUEST'],
      [null, false, 'BAD_REQUEST'],
      [7, false, 'BAD_REQUEST'],
      [8, false, 'UNKNOWN_METHOD'],
      [9, true, undefined],
    ]);
    expect(res[4].result).toEqual({ x: 1 });
    expect(s.stats.badRequests).toBe(4);
  });

  it('rejects an oversize line once, then serves the next line', async () => {
    const s = server();
    await s.start();
    // Sent in several writes, so the limit applies across chunks.
    const big = Buffer.alloc(MAX_REQUEST_BYTES * 3, 'a');
    const res = await raw('test0', Buffer.concat([big, Buffer.from('\n{"id":1,"method":"status"}\n')]), 2);
    expect(res[0]).toMatchObject({ id: null, ok: false, code: 'BAD_REQUEST' });
    expect(res[1]).toMatchObject({ id: 1, ok: true });
    expect(s.stats.badRequests).toBe(1);
    expect(await callDaemon('test0', 'status')).toBeTruthy();
  });

  it('answers pipelined requests in order, one at a time; a client that pipelines without reading holds about a megabyte, not gigabytes', async () => {
    const peers = Array.from({ length: 50 }, (_, i) => ({ publicKey: 'k'.repeat(44), endpoint: `192.0.2.${i}:51820`, allowedIps: [`100.64.0.${i}/32`], rxBytes: i }));
    let running = 0;
    let most = 0;
    const s = server('test0', {
      status: () => ({ interface: 'test0', peers }),
      slow: async (p) => {
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 5));
        running--;
        return p;
      },
    });
    await s.start();
    const ordered = await raw('test0', Array.from({ length: 20 }, (_, i) => `{"id":${i},"method":"slow","params":${i}}\n`).join(''), 20);
    expect(ordered.map((r) => r.result)).toEqual(Array.from({ length: 20 }, (_, i) => i));
    expect(most).toBe(1);
    // 200,000 pipelined status requests (5.4 MB), none of the answers (~3.5 KB each) read.
    const sock = connect(controlSocketPath('test0'));
    await new Promise((r) => sock.once('connect', r));
    sock.pause();
    const lines = '{"id":1,"method":"status"}\n'.repeat(1000);
    for (let i = 0; i < 200; i++) {
      sock.write(lines);
      await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setTimeout(r, 1_000));
    const held = [...(s as unknown as { sockets: Set<{ writableLength: number }> }).sockets].reduce((n, c) => n + c.writableLength, 0);
    console.log(`200,000 pipelined requests, none read: the daemon holds ${(held / 1e6).toFixed(2)} MB of answers; answered so far ${s.stats.requests}`);
    sock.destroy();
    expect(held).toBeLessThan(2 * 1024 * 1024);
    expect(await callDaemon('test0', 'status')).toBeTruthy(); // others are still served
  });

  it('not running: DAEMON_NOT_RUNNING with the documented message and hint', async () => {
    const e = await codeOf(callDaemon('absent0', 'status'));
    expect(e).toMatchObject({
      code: 'DAEMON_NOT_RUNNING',
      message: 'no agentvpn daemon for interface absent0',
      hint: 'start it with `sudo agentvpn up --config FILE` (or pass --interface)',
    });
    expect(await isDaemonAnswering('absent0')).toBe(false);
  });

  it('refuses to start beside a live daemon', async () => {
    await server().start();
    const e = await codeOf(new ControlServer('test0', {}).start());
    expect(e.code).toBe('ALREADY_RUNNING');
    expect(e.hint).toContain('agentvpn down --interface test0');
    expect(await callDaemon('test0', 'status')).toBeTruthy(); // the first one is untouched
  });

  it('replaces a stale socket left by a killed daemon', async () => {
    await server('probe0').start(); // makes the run dir
    const path = controlSocketPath('stale0');
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`]);
    await new Promise((r) => child.stdout.once('data', r));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect((await stat(path)).isSocket()).toBe(true);
    expect((await codeOf(callDaemon('stale0', 'status'))).code).toBe('DAEMON_NOT_RUNNING');
    await server('stale0').start();
    expect(await callDaemon('stale0', 'status')).toEqual({ interface: 'stale0', peers: [] });
  });

  it('will not delete a file that is not a socket', async () => {
    await server('probe0').start();
    await writeFile(controlSocketPath('file0'), 'precious');
    expect((await codeOf(server('file0').start())).code).toBe('CONTROL_SOCKET_BLOCKED');
  });

  it('times out on a daemon that does not answer', async () => {
    await server('test0', { hang: () => new Promise(() => {}) }).start();
    const e = await codeOf(callDaemon('test0', 'hang', {}, { timeoutMs: 200 }));
    expect(e.code).toBe('DAEMON_TIMEOUT');
  });

  it('a shutdown handler that stops the server still delivers its reply', async () => {
    const s = server('test0', { shutdown: () => { setImmediate(() => void s.stop()); return { stopping: true }; } });
    await s.start();
    expect(await callDaemon('test0', 'shutdown')).toEqual({ stopping: true });
    for (let i = 0; i < 50 && (await isDaemonAnswering('test0')); i++) await new Promise((r) => setTimeout(r, 20));
    expect(await isDaemonAnswering('test0')).toBe(false);
    expect((await codeOf(callDaemon('test0', 'status'))).code).toBe('DAEMON_NOT_RUNNING');
  });

  it('stop() closes idle client connections and removes the socket', async () => {
    const s = server();
    await s.start();
    const idle = connect(s.path);
    await new Promise((r) => idle.once('connect', r));
    const closed = new Promise((r) => idle.once('close', r));
    idle.resume();
    await s.stop();
    await closed;
    await expect(stat(s.path)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
