// `agentvpn registry` (the built CLI, from dist/: `npm test` builds it first) composes the registry and its built-in relay
// (src/cli/registry-with-relay.ts); with --no-relay it runs the registry alone. Checked from the
// outside, as an agent and a stranger see it: the join answer, STUN, relay hellos, UDP ports.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Identity } from '../../src/identity/identity.js';
import { waitFor } from '../../src/lab/index.js';
import { buildBindingRequest, newTransactionId, parseBindingResponse } from '../../src/net/stun.js';
import { RegistryClient } from '../../src/registry/client.js';
import { startAgent, waitState, type TestAgent } from '../relay/harness.js';
import { createTokenCli } from './registry-process.js';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'agentvpn.js');
/** How long a UDP port gets to answer a STUN request (or be refused by the kernel) on loopback. */
const PROBE_MS = 1500;

interface Started {
  answer: { url: string; port: number; relay: { udpPort: number; stunPorts: number[] } | null };
  stop(): Promise<number | null>;
}

/** Runs `agentvpn registry --json ARGS` on a fresh database; resolves with its first answer. */
async function registryCommand(db: string, args: string[]): Promise<Started> {
  const child = spawn(process.execPath, [BIN, 'registry', '--listen', '127.0.0.1:0', '--db', db, '--log-level', 'warn', '--json', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
  const out = { stdout: '', stderr: '' };
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out.stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out.stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  await Promise.race([
    waitFor(() => out.stdout.includes('\n'), { timeoutMs: 20_000, intervalMs: 20, what: 'the registry command\'s answer' }),
    exited.then((code) => { throw new Error(`registry exited (code ${code}): ${out.stderr}`); }),
  ]);
  return {
    answer: JSON.parse(out.stdout.split('\n')[0]),
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

/** A STUN binding request to 127.0.0.1:port from a connected socket: answered, refused (ICMP port unreachable), or silent. */
async function probeUdp(port: number): Promise<'answered' | 'refused' | 'silent'> {
  const socket = dgram.createSocket('udp4');
  try {
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve('silent'), PROBE_MS);
      socket.on('message', (m) => {
        if (parseBindingResponse(m, 0, m.length)) {
          clearTimeout(timer);
          resolve('answered');
        }
      });
      socket.on('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        resolve(e.code === 'ECONNREFUSED' ? 'refused' : 'silent');
      });
      socket.connect(port, '127.0.0.1', () => socket.send(buildBindingRequest(newTransactionId())));
    });
  } finally {
    socket.close();
  }
}

/** The registry's /v1/stats, read with a join token (Bearer). */
async function statsOf(url: string, token: string): Promise<{ relay: null | { clients: number; dropped: Record<string, number> } }> {
  const r = await fetch(`${url}/v1/stats`, { headers: { authorization: `Bearer ${token}` } });
  expect(r.status).toBe(200);
  return r.json() as Promise<{ relay: null | { clients: number; dropped: Record<string, number> } }>;
}

describe('agentvpn registry: the built-in relay composed beside the registry, or not (--no-relay)', () => {
  let dir: string;
  let running: Started | null = null;
  const agents: TestAgent[] = [];
  const clients: RegistryClient[] = [];

  afterEach(async () => {
    for (const a of agents.splice(0)) a.close();
    for (const c of clients.splice(0)) c.close();
    expect(await running?.stop()).toBe(0);
    running = null;
    rmSync(dir, { recursive: true, force: true });
  });

  async function join1(url: string, db: string, name: string, identity = Identity.generate()) {
    const client = new RegistryClient({ url, identity, network: 'default', timeoutMs: 5000 });
    clients.push(client);
    const token = createTokenCli(db);
    return { identity, token, answer: await client.join(name, token) };
  }

  it('with the relay: a member is told the relay and STUN on the registry\'s port number and is served; a stranger\'s hello is refused', async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-command-relay-'));
    const db = join(dir, 'registry.db');
    running = await registryCommand(db, []);
    const { url, port, relay } = running.answer;
    expect(relay).toEqual({ udpPort: port, stunPorts: [port, port + 1] });

    const member = await join1(url, db, 'member');
    expect(member.answer.relays).toEqual([{ udp: `127.0.0.1:${port}`, tcp: `http://127.0.0.1:${port}/v1/relay`, name: 'registry', region: 'default' }]);
    expect(member.answer.stun).toEqual([`127.0.0.1:${port}`, `127.0.0.1:${port + 1}`]);
    const stun = [await probeUdp(port), await probeUdp(port + 1)];
    console.log(`with the relay: STUN on ${port} and ${port + 1}: ${stun.join(', ')}`);
    expect(stun).toEqual(['answered', 'answered']);

    const info = member.answer.relays[0];
    const ok = await startAgent(info, { identity: member.identity });
    const stranger = await startAgent(info);
    agents.push(ok, stranger);
    await waitState(ok, 'udp');
    await waitFor(async () => ((await statsOf(url, member.token)).relay?.dropped['not-allowed'] ?? 0) >= 1, { intervalMs: 100, what: "the relay's refusal of the stranger" });
    const { relay: counters } = await statsOf(url, member.token);
    console.log(`with the relay: sessions ${counters?.clients}, stranger's hellos refused as not-allowed ${counters?.dropped['not-allowed']}, stranger state ${stranger.client.state}`);
    expect(counters?.clients).toBe(1);
    expect(stranger.client.state).not.toBe('udp');
  }, 60_000);

  it('--no-relay: the registry alone advertises no relay of its own, no STUN, and its UDP port number is closed', async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentvpn-command-relay-'));
    const db = join(dir, 'registry.db');
    running = await registryCommand(db, ['--no-relay', '--relay-peer', 'eu1=udp://198.51.100.7:7443,region=eu-west']);
    const { url, port, relay } = running.answer;
    expect(relay).toBeNull();

    const member = await join1(url, db, 'member');
    // Only the standalone relay the operator listed; no STUN.
    expect(member.answer.relays).toEqual([{ udp: '198.51.100.7:7443', name: 'eu1', region: 'eu-west' }]);
    expect(member.answer.stun).toEqual([]);
    const probes = [await probeUdp(port), await probeUdp(port + 1)];
    console.log(`--no-relay: UDP ${port} and ${port + 1}: ${probes.join(', ')}`);
    expect(probes).toEqual(['refused', 'refused']);
    expect((await statsOf(url, member.token)).relay).toBeNull();
  }, 60_000);
});
