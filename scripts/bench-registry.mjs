#!/usr/bin/env node
// Registry load benchmark, on each store in one run: one `agentvpn registry` on SQLite, and two
// instances on one PostgreSQL (src/lab/postgres.ts: a throwaway server on a unix socket). For
// each it registers AGENTS agents (join + publish) from CONCURRENCY workers spread over the
// instances, then measures lookups (GET by name, capability lists of ~100 and ~1,000 agents in
// pages), one heartbeat per agent, event fan-out (a publish on the first instance seen on an event
// stream of the last one), and event-stream snapshots (time, registry CPU and memory for
// SNAPSHOT_STREAMS streams at once). Registry CPU comes from /proc (user + system), per phase.
// Everything is on loopback or a unix socket.
//
// Run after `npm run build`, under the bench lock:
//   flock /tmp/agentvpn-bench.lock node scripts/bench-registry.mjs
// Env: AGENTS (10000), CONCURRENCY (8), GETS (20000), READERS (GETS/500), LISTS (500), FANOUT (300), SNAPSHOT_STREAMS (16),
//   STORES (sqlite,postgres), REGISTRY_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof").
import { availableParallelism } from 'node:os';
import {
  Identity, NETWORK, RegistryClient, cpuOf, loadAverage, machineTicks, memoryOf, openStream, pool, postgresUnavailableReason, recordOf, resetPeak, startStore, stats, timed,
} from './lib/registry-load.mjs';

const AGENTS = Number(process.env.AGENTS ?? 10_000);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 8);
// 20,000 lookups (~3 s at today's rate): 2,000 took 0.3 s, so their p99 was one GC pause or one sweep tick.
const GETS = Number(process.env.GETS ?? 20_000);
const LISTS = Number(process.env.LISTS ?? 500);
const FANOUT = Number(process.env.FANOUT ?? 300);
const SNAPSHOT_STREAMS = Number(process.env.SNAPSHOT_STREAMS ?? 16);
/**
 * Agents the lookups and lists are spread over: ~500 lookups each, inside one agent's read budget
 * (read-budget.ts: 1,000 units at once). More readers cost more per lookup in both processes
 * (each has its own kept connection: 400 of them took 0.27 ms of registry CPU per lookup, 8 took 0.14).
 */
const READERS = Number(process.env.READERS ?? Math.min(AGENTS, Math.max(CONCURRENCY, Math.ceil(GETS / 500))));
const STORES = (process.env.STORES ?? 'sqlite,postgres').split(',');

/** The whole benchmark against registry instances at `urls` (pids: theirs; dbPids: the database's, if a server). */
async function measure({ label, urls, pids, dbPids, token, dbSize }) {
  const cpu = () => cpuOf(pids);
  const dbCpu = () => cpuOf(dbPids());
  const rss = () => pids.reduce((a, p) => a + memoryOf(p).rssMiB, 0);
  const r = { label, instances: urls.length, rssStartMiB: rss() };
  const identities = Array.from({ length: AGENTS }, () => Identity.generate());
  const joined = new Array(AGENTS);

  const joinMs = [];
  const publishMs = [];
  const registerMs = [];
  let c0 = cpu();
  let d0 = dbCpu();
  let g0 = cpuOf([process.pid]);
  const m0 = machineTicks();
  let t0 = performance.now();
  await pool(AGENTS, CONCURRENCY, async (i) => {
    const identity = identities[i];
    const client = new RegistryClient({ url: urls[i % urls.length], identity, network: NETWORK });
    const name = `agent-${i}`;
    const start = performance.now();
    joined[i] = await client.join(name, token);
    const mid = performance.now();
    await client.publish(recordOf(identity, joined[i], i, 1));
    const end = performance.now();
    joinMs.push(mid - start);
    publishMs.push(end - mid);
    registerMs.push(end - start);
    client.close();
    if ((i + 1) % 1000 === 0) process.stderr.write(`\r${label}: registered ${i + 1}/${AGENTS}`);
  });
  process.stderr.write('\n');
  let seconds = (performance.now() - t0) / 1000;
  r.join = stats(joinMs);
  r.publish = stats(publishMs);
  r.register = stats(registerMs);
  r.registerPerS = AGENTS / seconds;
  r.registerCpuMsPerAgent = ((cpu() - c0) * 1000) / AGENTS;
  r.registerDbCpuMsPerAgent = ((dbCpu() - d0) * 1000) / AGENTS;
  r.registerClientCpuMsPerAgent = ((cpuOf([process.pid]) - g0) * 1000) / AGENTS;
  const m1 = machineTicks();
  r.registerMachineBusy = (m1.busy - m0.busy) / (m1.total - m0.total);
  r.registerSteal = (m1.steal - m0.steal) / (m1.total - m0.total);
  // Little's law in a closed loop: mean latency = clients / throughput, and throughput is at most
  // cores / (CPU per registration of every process here), so no registry beats this floor on these cores.
  r.registerFloorMs = (CONCURRENCY * (r.registerCpuMsPerAgent + r.registerDbCpuMsPerAgent + r.registerClientCpuMsPerAgent)) / availableParallelism();
  r.rssAfterRegisterMiB = rss();

  // Reads come from READERS agents (a fleet's reads are spread over its members; one agent's are
  // budgeted, read-budget.ts), each with its read session opened before the clock starts.
  const readers = identities.slice(0, READERS).map((identity, k) => new RegistryClient({ url: urls[k % urls.length], identity, network: NETWORK }));
  await pool(READERS, CONCURRENCY, (k) => readers[k].get('agent-0'));
  const getMs = [];
  c0 = cpu();
  g0 = cpuOf([process.pid]);
  t0 = performance.now();
  await pool(GETS, CONCURRENCY, async (i) => {
    const name = `agent-${(i * 7919) % AGENTS}`;
    getMs.push(await timed(async () => {
      const view = await readers[i % READERS].get(name);
      if (view.record.name !== name) throw new Error(`lookup of ${name} returned ${view.record.name}`);
    }));
  });
  seconds = (performance.now() - t0) / 1000;
  r.get = stats(getMs);
  r.getPerS = GETS / seconds;
  r.getCpuMs = ((cpu() - c0) * 1000) / GETS;
  r.getClientCpuMs = ((cpuOf([process.pid]) - g0) * 1000) / GETS;

  const listSmallMs = [];
  const listLargeMs = [];
  await pool(LISTS, CONCURRENCY, async (i) => {
    listSmallMs.push(await timed(async () => {
      const agents = await readers[i % READERS].list({ cap: `svc.s${i % 100}` });
      if (agents.length !== Math.ceil((AGENTS - (i % 100)) / 100)) throw new Error(`cap svc.s${i % 100}: ${agents.length} agents`);
    }));
  });
  c0 = cpu();
  await pool(Math.ceil(LISTS / 5), CONCURRENCY, async (i) => {
    listLargeMs.push(await timed(async () => {
      const agents = await readers[i % READERS].list({ cap: `llm.inference;model=m${i % 10}` });
      if (agents.length !== Math.ceil((AGENTS - (i % 10)) / 10)) throw new Error(`cap model=m${i % 10}: ${agents.length} agents`);
    }));
  });
  // The same list from one client at a time: its cost without queueing behind 7 others.
  const listAloneMs = [];
  await pool(20, 1, async (i) => {
    listAloneMs.push(await timed(() => readers[0].list({ cap: `llm.inference;model=m${i % 10}` })));
  });
  r.listAlone = stats(listAloneMs);
  r.listSmall = stats(listSmallMs);
  r.listLarge = stats(listLargeMs);
  r.listLargeCpuMs = ((cpu() - c0) * 1000) / Math.ceil(LISTS / 5);

  const heartbeatMs = [];
  c0 = cpu();
  d0 = dbCpu();
  t0 = performance.now();
  await pool(AGENTS, CONCURRENCY, async (i) => {
    const client = new RegistryClient({ url: urls[i % urls.length], identity: identities[i], network: NETWORK });
    heartbeatMs.push(await timed(() => client.heartbeat()));
    client.close();
  });
  seconds = (performance.now() - t0) / 1000;
  r.heartbeat = stats(heartbeatMs);
  r.heartbeatPerS = AGENTS / seconds;
  r.heartbeatCpuMs = ((cpu() - c0) * 1000) / AGENTS;
  r.heartbeatDbCpuMs = ((dbCpu() - d0) * 1000) / AGENTS;

  // Fan-out: publish seq 2 on the first instance, time until the last instance's stream shows it.
  const sentAt = new Map();
  const fanoutMs = [];
  const watcher = await openStream(urls.at(-1), identities[AGENTS - 1], (kind, agent) => {
    const t = sentAt.get(agent.record.id);
    if (kind === 'upsert' && t !== undefined && agent.record.seq === 2) {
      fanoutMs.push(performance.now() - t);
      sentAt.delete(agent.record.id);
    }
  });
  await pool(Math.min(FANOUT, AGENTS), CONCURRENCY, async (i) => {
    const client = new RegistryClient({ url: urls[0], identity: identities[i], network: NETWORK });
    sentAt.set(identities[i].id, performance.now());
    await client.publish(recordOf(identities[i], joined[i], i, 2));
    client.close();
  });
  const deadline = Date.now() + 10_000;
  while (sentAt.size > 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
  r.fanout = stats(fanoutMs);
  r.fanoutMissing = sentAt.size;
  watcher.close();

  // Snapshots: SNAPSHOT_STREAMS streams opened at once on the first instance (2 per reader: the per-credential cap is 4).
  const first = pids[0];
  const before = memoryOf(first).rssMiB;
  resetPeak(first);
  c0 = cpuOf([first]);
  const snapStart = performance.now();
  const streams = await Promise.all(Array.from({ length: SNAPSHOT_STREAMS }, (_, k) => openStream(urls[0], identities[k % Math.ceil(SNAPSHOT_STREAMS / 2)])));
  r.snapshot = {
    agents: streams[0].size, streams: SNAPSHOT_STREAMS, allMs: performance.now() - snapStart,
    cpuMsPerStream: ((cpuOf([first]) - c0) * 1000) / SNAPSHOT_STREAMS, peakDeltaMiB: memoryOf(first).peakMiB - before,
  };
  for (const s of streams) s.close();
  r.snapshot.oneMs = await timed(async () => (await openStream(urls[0], identities[0])).close());

  for (const c of readers) c.close();
  r.rssEndMiB = rss();
  r.peakMiB = Math.max(...pids.map((p) => memoryOf(p).peakMiB));
  r.dbMiB = await dbSize();
  return r;
}

const results = [];
console.log(`registry benchmark: ${AGENTS} agents, ${CONCURRENCY} concurrent clients, tree ${process.env.AGENTVPN_ROOT ?? '.'}; load average at start: ${loadAverage()}`);
for (const store of STORES) {
  if (store === 'postgres' && postgresUnavailableReason()) {
    console.log(`PostgreSQL skipped: ${postgresUnavailableReason()}`);
    continue;
  }
  const running = await startStore(store, AGENTS);
  try {
    results.push(await measure(running));
  } finally {
    await running.stop();
  }
}
console.log(`load average at end: ${loadAverage()}`);

const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const pp = (s) => `${f(s.p50)} / ${f(s.p99)}`;
const rows = [
  ['join + publish p50 / p99 ms', (r) => pp(r.register)],
  ['  mean / floor ms (clients x CPU / cores)', (r) => `${f(r.register.mean)} / ${f(r.registerFloorMs)}`],
  ['  machine busy / steal % (both cores)', (r) => `${f(100 * r.registerMachineBusy, 0)} / ${f(100 * r.registerSteal, 0)}`],
  ['  join p50 / p99 ms', (r) => pp(r.join)],
  ['  publish p50 / p99 ms', (r) => pp(r.publish)],
  ['registrations/s', (r) => f(r.registerPerS, 0)],
  ['registry CPU ms per registration', (r) => f(r.registerCpuMsPerAgent, 2)],
  ['database CPU ms per registration', (r) => f(r.registerDbCpuMsPerAgent, 2)],
  ['load generator CPU ms per registration', (r) => f(r.registerClientCpuMsPerAgent, 2)],
  ['lookup by name p50 / p99 ms', (r) => pp(r.get)],
  ['lookups/s', (r) => f(r.getPerS, 0)],
  ['registry CPU ms per lookup', (r) => f(r.getCpuMs, 2)],
  ['load generator CPU ms per lookup', (r) => f(r.getClientCpuMs, 2)],
  [`list ~${Math.ceil(AGENTS / 100)} agents p50 / p99 ms`, (r) => pp(r.listSmall)],
  [`list ~${Math.ceil(AGENTS / 10)} agents p50 / p99 ms`, (r) => pp(r.listLarge)],
  [`  the same, 1 client p50 / p99 ms`, (r) => pp(r.listAlone)],
  [`registry CPU ms per list of ~${Math.ceil(AGENTS / 10)}`, (r) => f(r.listLargeCpuMs, 2)],
  ['heartbeat p50 / p99 ms', (r) => pp(r.heartbeat)],
  ['heartbeats/s', (r) => f(r.heartbeatPerS, 0)],
  ['registry CPU ms per heartbeat', (r) => f(r.heartbeatCpuMs, 2)],
  ['database CPU ms per heartbeat', (r) => f(r.heartbeatDbCpuMs, 2)],
  ['fan-out p50 / p99 ms (other instance)', (r) => `${pp(r.fanout)}${r.fanoutMissing ? ` (${r.fanoutMissing} not seen)` : ''}`],
  ['snapshot of N agents: one stream ms', (r) => `${r.snapshot.agents}: ${f(r.snapshot.oneMs, 0)}`],
  ['  S streams at once: all ms', (r) => `${r.snapshot.streams}: ${f(r.snapshot.allMs, 0)}`],
  ['  registry CPU ms per stream', (r) => f(r.snapshot.cpuMsPerStream, 1)],
  ['  registry peak RSS growth MiB', (r) => f(r.snapshot.peakDeltaMiB, 1)],
  ['registry RSS start / registered / end MiB (all)', (r) => `${f(r.rssStartMiB, 0)} / ${f(r.rssAfterRegisterMiB, 0)} / ${f(r.rssEndMiB, 0)}`],
  ['registry peak RSS MiB (largest instance)', (r) => f(r.peakMiB, 0)],
  ['database size MiB', (r) => f(r.dbMiB, 1)],
];
console.log(`\n${'measure'.padEnd(44)}${results.map((r) => r.label.padStart(26)).join('')}`);
for (const [name, get] of rows) console.log(`${name.padEnd(44)}${results.map((r) => get(r).padStart(26)).join('')}`);
if (process.env.BENCH_JSON) console.log(JSON.stringify(results));
