import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Lab,
  REPO_ROOT,
  isPidAlive,
  labUnavailableReasons,
  listNamespaces,
  ping,
  renderWgQuickConfig,
  runCommand,
  startNebula,
  startWireguardGo,
  waitFor,
  waitForPing,
  wgGenPsk,
  wgKeyPair,
  type WgInterfaceConfig,
} from '../src/lab/index.js';

const reasons = labUnavailableReasons(['ip', 'wireguard-go', 'wg', 'ping', 'nsenter', 'unshare', 'nebula', 'nebula-cert']);
const inCI = !!process.env.CI;

describe('wg-quick config rendering', () => {
  it('renders interface and peers in wg-quick syntax', () => {
    const text = renderWgQuickConfig({
      privateKey: 'PRIV=',
      listenPort: 51820,
      addresses: ['100.64.0.1/24', 'fd00:a::1/64'],
      peers: [
        { publicKey: 'PUB=', presharedKey: 'PSK=', allowedIps: ['100.64.0.2/32', 'fd00:a::2/128'], endpoint: '192.0.2.2:51820', persistentKeepalive: 25 },
        { publicKey: 'PUB2=', allowedIps: ['100.64.0.3/32'] },
      ],
    });
    expect(text).toBe(
      [
        '[Interface]',
        'PrivateKey = PRIV=',
        'Address = 100.64.0.1/24, fd00:a::1/64',
        'ListenPort = 51820',
        'MTU = 1420',
        '',
        '[Peer]',
        'PublicKey = PUB=',
        'PresharedKey = PSK=',
        'AllowedIPs = 100.64.0.2/32, fd00:a::2/128',
        'Endpoint = 192.0.2.2:51820',
        'PersistentKeepalive = 25',
        '',
        '[Peer]',
        'PublicKey = PUB2=',
        'AllowedIPs = 100.64.0.3/32',
        '',
      ].join('\n'),
    );
  });
});

describe.skipIf(reasons.length > 0 && !inCI)('netns lab (root)', () => {
  let lab: Lab;

  beforeAll(() => {
    if (reasons.length > 0) throw new Error(`netns lab unavailable in CI: ${reasons.join('; ')}`);
    lab = new Lab();
  });

  afterAll(async () => {
    await lab?.cleanup();
    const left = (await listNamespaces()).filter((n) => lab && n.startsWith(lab.prefix));
    expect(left).toEqual([]);
  });

  it('two namespaces joined by a veth ping each other over IPv4 and IPv6', async () => {
    const a = await lab.addNamespace('va');
    const b = await lab.addNamespace('vb');
    expect(a.startsWith(lab.prefix)).toBe(true);
    const link = await lab.connect(a, b, { a: ['192.0.2.1/24', 'fd00:1::1/64'], b: ['192.0.2.2/24', 'fd00:1::2/64'] });
    expect(link.ifA.length).toBeLessThanOrEqual(15);
    const r4 = await ping(lab, a, '192.0.2.2', { count: 3, intervalSec: 0.2 });
    expect(r4.received).toBe(3);
    const r6 = await ping(lab, b, 'fd00:1::1', { count: 3, intervalSec: 0.2 });
    expect(r6.received).toBe(3);
    // exec reports exit codes without throwing; run throws with the command's stderr.
    const bad = await lab.exec(a, ['ip', 'link', 'show', 'nosuchdev']);
    expect(bad.code).not.toBe(0);
    await expect(lab.run(a, ['ip', 'link', 'show', 'nosuchdev'])).rejects.toThrow(/nosuchdev/);
  });

  it('wireguard-go tunnel between two namespaces carries IPv4 and IPv6 overlay pings', async () => {
    const a = await lab.addNamespace('wa');
    const b = await lab.addNamespace('wb');
    await lab.connect(a, b, { a: '198.51.100.1/24', b: '198.51.100.2/24' });
    const [ka, kb, psk] = await Promise.all([wgKeyPair(), wgKeyPair(), wgGenPsk()]);
    const cfgA: WgInterfaceConfig = {
      privateKey: ka.privateKey,
      listenPort: 51820,
      addresses: ['100.64.0.1/24', 'fd00:a::1/64'],
      peers: [{ publicKey: kb.publicKey, presharedKey: psk, allowedIps: ['100.64.0.2/32', 'fd00:a::2/128'], endpoint: '198.51.100.2:51820' }],
    };
    const cfgB: WgInterfaceConfig = {
      privateKey: kb.privateKey,
      listenPort: 51820,
      addresses: ['100.64.0.2/24', 'fd00:a::2/64'],
      peers: [{ publicKey: ka.publicKey, presharedKey: psk, allowedIps: ['100.64.0.1/32', 'fd00:a::1/128'], endpoint: '198.51.100.1:51820' }],
    };
    // Both called wg0: each wireguard-go has its own control-socket directory.
    const wa = await startWireguardGo(lab, a, cfgA, 'wg0');
    const wb = await startWireguardGo(lab, b, cfgB, 'wg0');
    expect(await lab.interfaceUp(a, 'wg0')).toBe(true);
    await waitForPing(lab, a, '100.64.0.2');
    const r4 = await ping(lab, a, '100.64.0.2', { count: 3, intervalSec: 0.2 });
    expect(r4.received).toBe(3);
    const r6 = await ping(lab, b, 'fd00:a::1', { count: 3, intervalSec: 0.2 });
    expect(r6.received).toBe(3);
    const hs = await wa.latestHandshakes();
    expect(hs.get(kb.publicKey) ?? 0).toBeGreaterThan(0);
    expect(await wb.show()).toContain(ka.publicKey);
    const pid = wa.pid;
    await wa.stop();
    expect(isPidAlive(pid)).toBe(false);
    expect(await lab.interfaceUp(a, 'wg0')).toBe(false);
    await wb.stop();
  });

  it('nebula between two namespaces carries an overlay ping', async () => {
    const a = await lab.addNamespace('na');
    const b = await lab.addNamespace('nb');
    await lab.connect(a, b, { a: '203.0.113.1/24', b: '203.0.113.2/24' });
    const net = await startNebula(lab, [
      { ns: a, name: 'na', overlay: '100.64.1.1/10', underlay: '203.0.113.1' },
      { ns: b, name: 'nb', overlay: '100.64.1.2/10', underlay: '203.0.113.2' },
    ]);
    await waitForPing(lab, a, '100.64.1.2');
    expect((await ping(lab, b, '100.64.1.1', { count: 2, intervalSec: 0.2 })).received).toBe(2);
    await net.stop();
    for (const n of net.nodes) expect(isPidAlive(n.process.pid!)).toBe(false);
  });

  it('cleanup removes namespaces and kills processes after a thrown error, and is idempotent', async () => {
    const lab2 = new Lab({ graceMs: 500 });
    let pid = 0;
    let ns = '';
    await expect(
      (async () => {
        try {
          ns = await lab2.addNamespace('x');
          // ignores SIGTERM, so cleanup has to escalate to SIGKILL
          const p = lab2.spawn(ns, ['sh', '-c', 'trap "" TERM; while :; do sleep 1; done']);
          pid = p.pid!;
          await waitFor(() => isPidAlive(pid), { what: 'sleeper' });
          throw new Error('boom');
        } finally {
          await lab2.cleanup();
        }
      })(),
    ).rejects.toThrow('boom');
    expect(pid).toBeGreaterThan(0);
    expect(isPidAlive(pid)).toBe(false);
    expect(await listNamespaces()).not.toContain(ns);
    expect(existsSync(lab2.dir)).toBe(false);
    await lab2.cleanup();
    await expect(lab2.addNamespace('y')).rejects.toThrow(/cleaned up/);
  });

  it('waitFor fails with a clear message', async () => {
    await expect(waitFor(() => false, { timeoutMs: 200, intervalMs: 50, what: 'the impossible' })).rejects.toThrow(
      /timed out after 200 ms .*waiting for the impossible/,
    );
  });

  const distLab = join(REPO_ROOT, 'dist', 'lab', 'index.js');
  it.skipIf(!existsSync(distLab))('a process that dies from an uncaught error still cleans up on exit', async () => {
    const script = `
      import { Lab } from ${JSON.stringify(distLab)};
      const lab = new Lab({ graceMs: 300 });
      const ns = await lab.addNamespace('crash');
      const p = lab.spawn(ns, ['sleep', '600']);
      console.log(JSON.stringify({ ns, pid: p.pid }));
      setTimeout(() => { throw new Error('uncaught'); }, 200);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    expect(code).not.toBe(0);
    const info = JSON.parse(out.trim().split('\n')[0]!) as { ns: string; pid: number };
    await waitFor(() => !isPidAlive(info.pid), { timeoutMs: 5000, what: 'the crashed lab’s sleeper to be gone' });
    expect(await listNamespaces()).not.toContain(info.ns);
  });

  it('sweepStale removes namespaces whose creating process is gone', async () => {
    // A PID that certainly existed and is now dead: a child we started and reaped.
    const child = spawn('true');
    await new Promise((r) => child.on('exit', r));
    const deadPid = child.pid!;
    expect(isPidAlive(deadPid)).toBe(false);
    const stale = `avl${deadPid}-0-stale`;
    await runCommand(['ip', 'netns', 'add', stale], { check: true });
    try {
      const removed = await Lab.sweepStale();
      expect(removed).toContain(stale);
      expect(removed.every((n) => !n.startsWith(lab.prefix))).toBe(true);
      expect(await listNamespaces()).not.toContain(stale);
    } finally {
      await runCommand(['ip', 'netns', 'del', stale]);
    }
  });
});
