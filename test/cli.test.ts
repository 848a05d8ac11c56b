import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ControlServer } from '../src/daemon/control-server.js';
import { cliEnvironment } from './fixtures/cli-env.js';
import type { DeviceStatus } from '../src/daemon/status-types.js';
import { formatStatus } from '../src/cli/commands/status.js';
import { columns, formatAgo, formatBytes } from '../src/cli/output.js';

const ROOT = join(import.meta.dirname, '..');
const hasWg = (() => {
  try {
    execFileSync('sh', ['-c', 'command -v wg'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

const wg = (args: string[], input: string): string => execFileSync('wg', args, { input, encoding: 'utf8' });

/** The built CLI with a private run dir (see the fixture). */
const { env: cliEnv, cli } = cliEnvironment('agentvpn-cli-');
const servers = cliEnv.servers;

const NOW = 1_700_000_000_000;
const STATUS: DeviceStatus = {
  interface: 'test0',
  publicKey: 'XCzwZQJkH432/K+7s/etkninGPMI7T92AqwtORtEtjM=',
  listenPort: 51820,
  addresses: ['10.8.0.1/24', 'fd00:8::1/64'],
  mtu: 1420,
  pid: 4242,
  startedAt: NOW - 3_725_000,
  dropped: { 'no-route': 3, replay: 0 },
  peers: [
    {
      publicKey: 'lC47ofDiEcdwuQq6n7ZSJRDm6IUF1rPpOcoVk++n0Rw=',
      endpoint: '192.0.2.10:51820',
      allowedIps: ['10.8.0.2/32'],
      latestHandshake: NOW - 12_000,
      rxBytes: 1536,
      txBytes: 5 * 1024 * 1024,
      persistentKeepalive: 25,
      dropped: {},
    },
    {
      publicKey: 'ZAG0cSiBN3udIIPGfY4aSbB/z5C7MJSIaVLAmL4MowU=',
      endpoint: null,
      allowedIps: [],
      latestHandshake: null,
      rxBytes: 0,
      txBytes: 0,
      persistentKeepalive: 0,
      dropped: { 'bad-mac': 2 },
    },
  ],
};

describe('output helpers', () => {
  it('formats like wg show', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.00 GiB');
    expect(formatAgo(NOW - 12_000, NOW)).toBe('12 seconds ago');
    expect(formatAgo(NOW - 3_661_000, NOW)).toBe('1 hour, 1 minute, 1 second ago');
    expect(formatAgo(NOW, NOW)).toBe('just now');
    expect(columns([['a:', '1'], ['long:', '2']], '  ')).toBe('  a:     1\n  long:  2');
  });

  it('renders a status with aligned values, dropping empty rows', () => {
    expect(formatStatus(STATUS, NOW)).toBe(`interface: test0
  public key:   XCzwZQJkH432/K+7s/etkninGPMI7T92AqwtORtEtjM=
  listen port:  51820
  addresses:    10.8.0.1/24, fd00:8::1/64
  mtu:          1420
  daemon:       pid 4242, up 1 hour, 2 minutes, 5 seconds
  dropped:      no-route 3

peer: lC47ofDiEcdwuQq6n7ZSJRDm6IUF1rPpOcoVk++n0Rw=
  endpoint:              192.0.2.10:51820
  allowed ips:           10.8.0.2/32
  latest handshake:      12 seconds ago
  transfer:              1.50 KiB received, 5.00 MiB sent
  persistent keepalive:  every 25 seconds

peer: ZAG0cSiBN3udIIPGfY4aSbB/z5C7MJSIaVLAmL4MowU=
  endpoint:          (none)
  allowed ips:       (none)
  latest handshake:  never
  transfer:          0 B received, 0 B sent
  dropped:           bad-mac 2`);
  });
});

describe('agentvpn CLI', () => {
  it('--version, --help and usage errors', async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect((await cli(['--version'])).stdout.trim()).toBe(pkg.version);
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    for (const c of ['up', 'down', 'status', 'genkey', 'pubkey', '--json']) expect(help.stdout).toContain(c);
    const bad = await cli(['frobnicate']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^error: .*frobnicate.*\nhint: .*--help/);
    const badJson = await cli(['frobnicate', '--json']);
    expect(badJson.code).toBe(1);
    expect(JSON.parse(badJson.stdout)).toMatchObject({ ok: false, code: 'USAGE' });
    expect((await cli([])).code).toBe(1);
  });

  it('up refuses a bad --rotate-every and --trust before it starts anything', async () => {
    const base = ['up', '--registry', 'http://127.0.0.1:9', '--name', 'x', '--foreground', '--json', '--state-dir', join(ROOT, 'no-such-state-dir')];
    for (const [value, code] of [['5s', 'BAD_DURATION'], ['soon', 'BAD_DURATION']] as const) {
      const r = await cli([...base, '--rotate-every', value]);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, code });
    }
    const badTrust = await cli([...base, '--trust', 'maybe']);
    expect(badTrust.code).toBe(1);
    expect(JSON.parse(badTrust.stdout)).toMatchObject({ ok: false, code: 'USAGE' });
  });

  it('up warns that a --token on the command line is readable by local users, and refuses a --token-file others may read', async () => {
    const base = ['up', '--registry', 'http://127.0.0.1:9', '--name', 'x', '--foreground', '--json', '--state-dir', join(ROOT, 'no-such-state-dir')];
    const onLine = await cli([...base, '--token', 'avj_visible', '--rotate-every', '5s']); // stops at the bad --rotate-every, after the warning
    expect(onLine.stderr).toMatch(/warning: --token on the command line can be read by every local user.*--token-file/);
    const dir = mkdtempSync(join(tmpdir(), 'agentvpn-token-'));
    try {
      const file = join(dir, 'token');
      writeFileSync(file, 'avj_secret\n', { mode: 0o644 });
      chmodSync(file, 0o644);
      const readable = await cli([...base, '--token-file', file]);
      expect(readable.code).toBe(1);
      expect(JSON.parse(readable.stdout)).toMatchObject({ ok: false, code: 'CONFIG_INSECURE', hint: expect.stringContaining('chmod 600') });
      expect(readable.stderr).not.toMatch(/warning: --token/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('genkey prints a clamped base64 key', async () => {
    const r = await cli(['genkey']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^[A-Za-z0-9+/]{43}=\n$/);
    const k = Buffer.from(r.stdout.trim(), 'base64');
    expect(k[0] & 7).toBe(0);
    expect(k[31] & 0xc0).toBe(0x40);
    const j = JSON.parse((await cli(['genkey', '--json'])).stdout) as { ok: boolean; privateKey: string };
    expect(j.ok).toBe(true);
    expect(Buffer.from(j.privateKey, 'base64')).toHaveLength(32);
  });

  it('pubkey matches a known wg vector and --json', async () => {
    const priv = 'mMzB2kvD8zSMKzeCqTR+v24jn/sGt13n7XoYbl0USlc=';
    const pub = 'XCzwZQJkH432/K+7s/etkninGPMI7T92AqwtORtEtjM=';
    expect(await cli(['pubkey'], { input: priv + '\n' })).toEqual({ code: 0, stdout: pub + '\n', stderr: '' });
    expect(JSON.parse((await cli(['pubkey', '--json'], { input: priv })).stdout)).toEqual({ ok: true, publicKey: pub });
  });

  it.runIf(hasWg)('pubkey is byte-compatible with wg pubkey (clamped, unclamped, wg- and agentvpn-made keys)', async () => {
    const keys = [
      wg(['genkey'], '').trim(),
      (await cli(['genkey'])).stdout.trim(),
      randomBytes(32).toString('base64'), // unclamped: both sides must clamp the same way
      Buffer.alloc(32, 0xff).toString('base64'),
    ];
    for (const k of keys) {
      for (const input of [k + '\n', k, `${k}\n\n`]) {
        const ours = await cli(['pubkey'], { input });
        expect(ours.stdout).toBe(wg(['pubkey'], input));
      }
    }
    // Our genkey output is accepted by wg.
    const mine = (await cli(['genkey'])).stdout;
    expect(wg(['pubkey'], mine)).toBe((await cli(['pubkey'], { input: mine })).stdout);
  });

  it('pubkey rejects bad input with BAD_KEY', async () => {
    for (const input of ['', 'hello\n', 'AAAA\n', 'x'.repeat(10_000)]) {
      const r = await cli(['pubkey'], { input });
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^error: .+\nhint: .+\n$/);
    }
    const j = await cli(['pubkey', '--json'], { input: 'hello' });
    expect(j.code).toBe(1);
    expect(JSON.parse(j.stdout)).toMatchObject({ ok: false, code: 'BAD_KEY' });
  });

  it('status and down without a daemon say so', async () => {
    for (const cmd of ['status', 'down']) {
      const r = await cli([cmd, '--interface', 'nobody0']);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe('error: no agentvpn daemon for interface nobody0\nhint: start it with `sudo agentvpn up --config FILE` (or pass --interface)\n');
      const j = await cli([cmd, '-i', 'nobody0', '--json']);
      expect(JSON.parse(j.stdout)).toEqual({
        ok: false,
        code: 'DAEMON_NOT_RUNNING',
        message: 'no agentvpn daemon for interface nobody0',
        hint: 'start it with `sudo agentvpn up --config FILE` (or pass --interface)',
      });
    }
    expect(JSON.parse((await cli(['status', '-i', 'no/pe', '--json'])).stdout)).toMatchObject({ code: 'BAD_INTERFACE_NAME' });
  });

  it('status talks to the daemon', async () => {
    const s = new ControlServer('test0', { status: () => ({ ...STATUS, startedAt: Date.now() }) });
    servers.push(s);
    await s.start();
    const r = await cli(['status', '--interface', 'test0']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^interface: test0\n {2}public key: {3}XCzw/);
    expect(r.stdout).toContain('latest handshake:      ');
    expect(r.stdout).toContain('dropped:           bad-mac 2');
    const j = JSON.parse((await cli(['status', '-i', 'test0', '--json'])).stdout) as DeviceStatus & { ok: boolean };
    expect(j.ok).toBe(true);
    expect(j.peers).toEqual(STATUS.peers);
    expect(j.publicKey).toBe(STATUS.publicKey);
  });

  it('down shuts the daemon down and waits for it', async () => {
    for (const json of [false, true]) {
      const s: ControlServer = new ControlServer('test0', {
        // Like a daemon: reply first, then tear down a little later.
        shutdown: () => { setTimeout(() => void s.stop(), 300); return { stopping: true }; },
      });
      servers.push(s);
      await s.start();
      const r = await cli(json ? ['down', '-i', 'test0', '--json'] : ['down', '-i', 'test0']);
      expect(r.code).toBe(0);
      if (json) expect(JSON.parse(r.stdout)).toEqual({ ok: true, interface: 'test0' });
      else expect(r.stdout).toBe('test0 is down\n');
      expect((await cli(['status', '-i', 'test0'])).code).toBe(1);
    }
  });

  it.runIf(process.getuid?.() === 0)('a non-root user gets CONTROL_PERMISSION', async () => {
    const s = new ControlServer('test0', { status: () => STATUS });
    servers.push(s);
    await s.start();
    const r = await cli(['status', '-i', 'test0', '--json'], { uid: 65534 });
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, code: 'CONTROL_PERMISSION', hint: 'use sudo' });
  });
});
