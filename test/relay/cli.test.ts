// `agentvpn relay` (the built CLI, bin/agentvpn.js): the allow list with networks, and its errors.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { UPGRADE_PATH, UPGRADE_PROTOCOL } from '../../src/relay/tcp.js';
import { valueOf } from '../metrics/exposition.js';
import { idleConnections } from '../registry/hostile-helpers.js';

const BIN = join(import.meta.dirname, '..', '..', 'bin', 'agentvpn.js');

function relayCli(args: string[], opts: { maxFds?: number } = {}) {
  const argv = [process.execPath, BIN, 'relay', '--listen', '127.0.0.1:0', '--log-level', 'warn', '--json', ...args];
  const full = opts.maxFds ? ['prlimit', `--nofile=${opts.maxFds}:${opts.maxFds}`, ...argv] : argv;
  const child = spawn(full[0], full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (out.stdout += d));
  child.stderr.on('data', (d) => (out.stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, out, exited };
}

/** A TCP port free on loopback just now (--metrics takes no port 0). */
async function freeTcpPort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

describe('agentvpn relay', () => {
  it('puts --allow-key entries in their networks ("default" without one) and says so', async () => {
    const [a, b] = [Identity.generate(), Identity.generate()];
    const r = relayCli(['--allow-key', `red:${agentIdOf(a.publicKey)}`, '--allow-key', Buffer.from(b.wgPublicKey).toString('base64')]);
    try {
      await waitFor(() => r.out.stdout.includes('\n'), { timeoutMs: 15_000, what: `relay output (${r.out.stderr})` });
      expect(JSON.parse(r.out.stdout)).toMatchObject({ allowKeys: 2, networks: ['default', 'red'] });
    } finally {
      r.child.kill('SIGTERM');
    }
    expect(await r.exited).toBe(0);
  });

  it('says the names it takes hellos for (--name, repeatable), and that it is unnamed without', async () => {
    const named = relayCli(['--name', 'eu1', '--name', 'eu1-old']);
    const unnamed = relayCli([]);
    try {
      for (const r of [named, unnamed]) await waitFor(() => r.out.stdout.includes('\n'), { timeoutMs: 15_000, what: `relay output (${r.out.stderr})` });
      expect(JSON.parse(named.out.stdout)).toMatchObject({ names: ['eu1', 'eu1-old'] });
      expect(JSON.parse(unnamed.out.stdout)).toMatchObject({ names: [] });
    } finally {
      named.child.kill('SIGTERM');
      unnamed.child.kill('SIGTERM');
    }
    expect([await named.exited, await unnamed.exited]).toEqual([0, 0]);
  });

  it('refuses a --name that is no relay name (uppercase, dots, empty, over 63 characters, more than 8) with a hint, before it listens', async () => {
    const bad = [['EU1'], ['eu1.example'], [''], ['a'.repeat(64)], Array.from({ length: 9 }, (_, i) => `r${i}`)];
    const runs = bad.map((names) => relayCli(names.flatMap((n) => ['--name', n])));
    for (const [i, r] of runs.entries()) {
      expect(await r.exited).not.toBe(0);
      const out = JSON.parse(r.out.stdout) as { code: string; message: string; hint: string };
      console.log(`--name ${JSON.stringify(bad[i]).slice(0, 60)}: ${out.code}: ${out.message.slice(0, 80)}`);
      expect(out).toMatchObject({ ok: false, code: 'BAD_RELAY_NAME' });
      expect(out.hint).toMatch(/relay-peer|advertises/);
    }
  });

  it('keeps its TCP fallback open under an idle-connection flood past its descriptors (caps and timeouts of its own), and its metrics count the evictions', async () => {
    const r = relayCli(['--metrics', `127.0.0.1:${await freeTcpPort()}`], { maxFds: 1024 });
    const sockets: Socket[] = [];
    try {
      await waitFor(() => r.out.stdout.includes('\n'), { timeoutMs: 15_000, what: `relay output (${r.out.stderr})` });
      const started = JSON.parse(r.out.stdout) as { tcp: string; metrics: string };
      const port = Number(new URL(started.tcp).port);
      // 40 addresses with 100 idle connections each: more than the relay's 1,024 descriptors.
      sockets.push(...(await Promise.all(Array.from({ length: 40 }, (_, i) => idleConnections(port, 100, `127.0.1.${i + 1}`)))).flat());
      await new Promise((res) => setTimeout(res, 1_000));
      const answer = await new Promise<string>((resolve) => {
        let text = '';
        const s = connect({ host: '127.0.0.1', port, localAddress: '127.0.0.9' }, () =>
          s.write(`GET ${UPGRADE_PATH} HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: ${UPGRADE_PROTOCOL}\r\n\r\n`));
        sockets.push(s);
        s.setEncoding('latin1').on('data', (d: string) => {
          text += d;
          if (text.includes('\r\n')) resolve(text.split('\r\n')[0]);
        });
        s.on('error', (e) => resolve(`error ${e.message}`));
        setTimeout(() => resolve(text || 'no answer within 5 s'), 5_000);
      });
      const open = sockets.filter((s) => !s.destroyed).length;
      console.log(`relay under a flood of 4,000 idle connections (1,024 descriptors, ${open} of ours still open): a TCP fallback session got "${answer}"`);
      expect(answer).toMatch(/^HTTP\/1\.1 101/);
      const text = await (await fetch(started.metrics)).text();
      const held = valueOf(text, 'agentvpn_relay_tcp_connections');
      const evicted = valueOf(text, 'agentvpn_relay_tcp_connections_refused_total', { why: 'evicted' });
      console.log(`relay metrics after the flood: ${held} TCP connections open, ${evicted} evicted (idle, past the total cap)`);
      expect(held).toBeGreaterThan(0);
      expect(held).toBeLessThan(1024);
      expect(evicted).toBeGreaterThan(1000); // past the total cap, idle ones made room (how many of the 4,000 got in varies)
      expect(valueOf(text, 'agentvpn_relay_tcp_connections_refused_total', { why: 'per-address' })).toBe(0);
    } finally {
      for (const s of sockets) s.destroy();
      r.child.kill('SIGTERM');
    }
    expect(await r.exited).toBe(0);
  });

  it('refuses a malformed --allow-key with a hint', async () => {
    const r = relayCli(['--allow-key', 'Red:nope']);
    expect(await r.exited).not.toBe(0);
    expect(JSON.parse(r.out.stdout)).toMatchObject({ ok: false, code: 'BAD_NETWORK', hint: expect.stringContaining('network names') });
  });
});
