// `agentvpn relay` (the built CLI, bin/agentvpn.js): the allow list with networks, and its errors.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';

const BIN = join(import.meta.dirname, '..', '..', 'bin', 'agentvpn.js');

function relayCli(args: string[]) {
  const child = spawn(process.execPath, [BIN, 'relay', '--listen', '127.0.0.1:0', '--log-level', 'warn', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (out.stdout += d));
  child.stderr.on('data', (d) => (out.stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, out, exited };
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

  it('refuses a malformed --allow-key with a hint', async () => {
    const r = relayCli(['--allow-key', 'Red:nope']);
    expect(await r.exited).not.toBe(0);
    expect(JSON.parse(r.out.stdout)).toMatchObject({ ok: false, code: 'BAD_NETWORK', hint: expect.stringContaining('network names') });
  });
});
