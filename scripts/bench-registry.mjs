#!/usr/bin/env node
// Registry load benchmark: starts `agentvpn registry` in a child process on 127.0.0.1 with a
// temporary database, registers AGENTS agents (join + publish) from CONCURRENCY workers, then
// measures lookups (GET by name, list with a capability filter), one heartbeat per agent (each
// takes its signed timestamp in the database with the liveness it sets), and the registry's memory.
// Run after `npm run build`:  node scripts/bench-registry.mjs   (AGENTS=1000 for a quick run)
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
if (!existsSync(join(root, 'dist/registry/client.js'))) {
  console.error('error: dist/ is missing\nhint: run `npm run build` first');
  process.exit(1);
}
const { Identity } = await import('../dist/identity/identity.js');
const { RegistryClient } = await import('../dist/registry/client.js');
const { signRecord, RECORD_LIFETIME_MS } = await import('../dist/registry/record.js');

const AGENTS = Number(process.env.AGENTS ?? 10_000);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 8);
const GETS = Number(process.env.GETS ?? 2_000);
const LISTS = Number(process.env.LISTS ?? 500);
const NETWORK = 'bench';
const bin = join(root, 'bin/agentvpn.js');
const dir = mkdtempSync(join(tmpdir(), 'agentvpn-bench-registry-'));
const db = join(dir, 'registry.db');

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN;
}

function summary(label, samples) {
  const s = [...samples].sort((a, b) => a - b);
  const f = (x) => x.toFixed(2).padStart(8);
  return `${label.padEnd(34)} n=${String(s.length).padStart(6)}  p50 ${f(percentile(s, 0.5))} ms  p99 ${f(percentile(s, 0.99))} ms  max ${f(s.at(-1))} ms`;
}

function memoryOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMiB: kb('VmRSS') / 1024, peakMiB: kb('VmHWM') / 1024 };
}

async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** Runs `task(i)` for i in [0, n) on `workers` concurrent loops. */
async function pool(n, workers, task) {
  let next = 0;
  await Promise.all(Array.from({ length: workers }, async () => {
    while (next < n) await task(next++);
  }));
}

function startRegistry() {
  const child = spawn(process.execPath, [bin, 'registry', '--listen', '127.0.0.1:0', '--db', db, '--network', NETWORK, '--log-level', 'warn', '--json'],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n')[0];
      if (out.includes('\n')) {
        const answer = JSON.parse(line);
        if (!answer.ok) reject(new Error(`registry failed to start: ${answer.message}`));
        else resolve({ child, url: answer.url });
      }
    });
    child.once('exit', (code) => reject(new Error(`registry exited during start (code ${code})`)));
  });
}

const token = JSON.parse(execFileSync(process.execPath, [bin, 'registry', 'token', 'create', '--db', db, '--network', NETWORK,
  '--uses', String(AGENTS), '--json'], { encoding: 'utf8' })).token;
const { child, url } = await startRegistry();
const stopRegistry = () => new Promise((resolve) => {
  if (child.exitCode !== null) return resolve();
  child.once('exit', resolve);
  child.kill('SIGTERM');
});
process.on('exit', () => child.exitCode === null && child.kill('SIGKILL'));

try {
  console.log(`registry pid ${child.pid} at ${url}; ${AGENTS} agents, ${CONCURRENCY} workers; RSS at start ${memoryOf(child.pid).rssMiB.toFixed(1)} MiB`);
  process.stdout.write('generating identities… ');
  const identities = Array.from({ length: AGENTS }, () => Identity.generate());
  console.log('done');

  const joinMs = [];
  const publishMs = [];
  const registerMs = [];
  const t0 = performance.now();
  await pool(AGENTS, CONCURRENCY, async (i) => {
    const identity = identities[i];
    const client = new RegistryClient({ url, identity, network: NETWORK });
    const name = `agent-${i}`;
    const start = performance.now();
    const joined = await client.join(name, token);
    const mid = performance.now();
    const now = Date.now();
    await client.publish(signRecord(identity, {
      v: 1, network: NETWORK, id: identity.id, name, wgPublicKey: Buffer.from(identity.wgPublicKey).toString('base64'),
      ipv4: joined.ipv4, ipv6: joined.ipv6, endpoints: [`192.0.2.${1 + (i % 250)}:51820`],
      capabilities: [`svc.s${i % 100}`, `llm.inference@1;model=m${i % 10}`], seq: 1, issuedAt: now, expiresAt: now + RECORD_LIFETIME_MS,
    }));
    const end = performance.now();
    joinMs.push(mid - start);
    publishMs.push(end - mid);
    registerMs.push(end - start);
    client.close();
    if ((i + 1) % 1000 === 0) process.stdout.write(`\rregistered ${i + 1}/${AGENTS}`);
  });
  const registrationTotal = performance.now() - t0;
  console.log('');
  const afterRegistration = memoryOf(child.pid);

  const readers = identities.slice(0, CONCURRENCY).map((identity) => new RegistryClient({ url, identity, network: NETWORK }));
  const getMs = [];
  const listSmallMs = [];
  const listLargeMs = [];
  const t1 = performance.now();
  await pool(GETS, CONCURRENCY, async (i) => {
    const name = `agent-${(i * 7919) % AGENTS}`;
    getMs.push(await timed(async () => {
      const view = await readers[i % CONCURRENCY].get(name);
      if (view.record.name !== name) throw new Error(`lookup of ${name} returned ${view.record.name}`);
    }));
  });
  await pool(LISTS, CONCURRENCY, async (i) => {
    listSmallMs.push(await timed(async () => {
      const agents = await readers[i % CONCURRENCY].list({ cap: `svc.s${i % 100}` });
      if (agents.length !== Math.ceil((AGENTS - (i % 100)) / 100)) throw new Error(`cap svc.s${i % 100}: ${agents.length} agents`);
    }));
  });
  await pool(Math.ceil(LISTS / 5), CONCURRENCY, async (i) => {
    listLargeMs.push(await timed(() => readers[i % CONCURRENCY].list({ cap: `llm.inference;model=m${i % 10}` })));
  });
  const lookupTotal = performance.now() - t1;

  const heartbeatMs = [];
  const t2 = performance.now();
  await pool(AGENTS, CONCURRENCY, async (i) => {
    const client = new RegistryClient({ url, identity: identities[i], network: NETWORK });
    heartbeatMs.push(await timed(() => client.heartbeat()));
    client.close();
  });
  const heartbeatTotal = performance.now() - t2;

  let snapshotSize = 0;
  const snapshotMs = await timed(() => new Promise((resolve, reject) => {
    const w = readers[0].watch({
      snapshot: (agents) => { snapshotSize = agents.length; w.close(); resolve(); },
      change: () => {},
      disconnected: (e) => { w.close(); reject(e); },
    });
  }));
  const afterLookups = memoryOf(child.pid);
  for (const r of readers) r.close();

  console.log('\nregistration (join + publish, signed, over HTTP)');
  console.log(summary('  join', joinMs));
  console.log(summary('  publish', publishMs));
  console.log(summary('  join + publish', registerMs));
  console.log(`  total ${(registrationTotal / 1000).toFixed(1)} s, ${(AGENTS / (registrationTotal / 1000)).toFixed(0)} agents/s`);
  console.log('lookups (signed reads)');
  console.log(summary('  GET /v1/agents/NAME', getMs));
  console.log(summary(`  list cap=svc.sN (~${Math.ceil(AGENTS / 100)} agents)`, listSmallMs));
  console.log(summary(`  list cap=…;model=mN (~${Math.ceil(AGENTS / 10)} agents)`, listLargeMs));
  console.log(`  total ${(lookupTotal / 1000).toFixed(1)} s`);
  console.log('heartbeats (signed, usable once)');
  console.log(summary('  POST /v1/agents/ID/heartbeat', heartbeatMs));
  console.log(`  total ${(heartbeatTotal / 1000).toFixed(1)} s, ${(AGENTS / (heartbeatTotal / 1000)).toFixed(0)} heartbeats/s`);
  console.log(`event stream snapshot of ${snapshotSize} agents: ${snapshotMs.toFixed(0)} ms`);
  console.log(`registry RSS after registration ${afterRegistration.rssMiB.toFixed(1)} MiB, after lookups ${afterLookups.rssMiB.toFixed(1)} MiB (peak ${afterLookups.peakMiB.toFixed(1)} MiB)`);
} finally {
  await stopRegistry();
  rmSync(dir, { recursive: true, force: true });
}
