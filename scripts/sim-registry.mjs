#!/usr/bin/env node
// Registry simulation: AGENTS lightweight agents (in-process identities that sign real joins,
// publishes, heartbeats and reads over HTTP; no daemons, no tunnels) against the registry pair on
// PostgreSQL and against one registry on SQLite. Reports what a model of larger fleets needs:
// registry and database CPU per request, memory per agent, database rows and size, the
// heartbeat load at the default interval against what the registries sustain, and what event
// streams cost (snapshot and fan-out of one change to every stream). Loopback only.
//
// Run after `npm run build`, under the bench lock (it takes minutes):
//   flock /tmp/agentvpn-bench.lock node scripts/sim-registry.mjs
// Env: AGENTS (50000), CONCURRENCY (16), HEARTBEAT_SECONDS (20), STREAMS (64), FANOUT (500),
//   STORES (postgres,sqlite).
import {
  Identity, NETWORK, RegistryClient, cpuOf, loadAverage, memoryOf, openStream, pool, postgresUnavailableReason, recordOf, resetPeak, startStore, stats, timed,
} from './lib/registry-load.mjs';

const AGENTS = Number(process.env.AGENTS ?? 50_000);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 16);
const HEARTBEAT_SECONDS = Number(process.env.HEARTBEAT_SECONDS ?? 20);
const STREAMS = Number(process.env.STREAMS ?? 64);
const FANOUT = Number(process.env.FANOUT ?? 500);
const STORES = (process.env.STORES ?? 'postgres,sqlite').split(',');
/** Streams one credential may hold (the registry's STREAMS_PER_CREDENTIAL). */
const STREAMS_PER_IDENTITY = 4;

/**
 * Snapshots opened at once: each is the whole fleet (~27 MB of JSON at 50,000 agents) parsed by
 * this one process; more at once and the registry rightly drops a stream that takes nothing for
 * a keep-alive period.
 */
const SNAPSHOTS_AT_ONCE = 4;

/** STREAMS event streams on `url`, STREAMS_PER_IDENTITY per identity; one that fails is counted in `failures`. */
async function openStreams(url, identities, failures) {
  const owners = Math.ceil(STREAMS / STREAMS_PER_IDENTITY);
  const streams = [];
  for (let k = 0; k < STREAMS; k += SNAPSHOTS_AT_ONCE) {
    const batch = await Promise.allSettled(Array.from({ length: Math.min(SNAPSHOTS_AT_ONCE, STREAMS - k) }, (_, j) => openStream(url, identities[(k + j) % owners])));
    for (const b of batch) {
      if (b.status === 'fulfilled') streams.push(b.value);
      else failures.push(`stream: ${b.reason.code ?? ''} ${b.reason.message}`);
    }
  }
  return streams;
}

async function simulate(store, identities) {
  const s = await startStore(store, AGENTS);
  const { urls, pids } = s;
  const cpu = () => cpuOf(pids);
  const dbCpu = () => cpuOf(s.dbPids());
  const rssEach = () => pids.map((p) => memoryOf(p).rssMiB);
  const r = { label: s.label, agents: AGENTS, rssStartMiB: rssEach() };
  /** Requests that failed (reset connections, refusals): counted and reported, a few do not end the run. */
  const failures = [];
  r.failures = failures;
  try {
    // 1. Everyone joins and publishes.
    const joined = new Array(AGENTS);
    const registerMs = [];
    let c0 = cpu();
    let d0 = dbCpu();
    let t0 = performance.now();
    let heartbeatIntervalMs = 0;
    await pool(AGENTS, CONCURRENCY, async (i) => {
      const client = new RegistryClient({ url: urls[i % urls.length], identity: identities[i], network: NETWORK });
      // One retry: on this loaded machine a connection is now and then reset; counted, not fatal.
      for (let attempt = 0; attempt < 2 && joined[i] === undefined; attempt++) {
        try {
          registerMs.push(await timed(async () => {
            const j = await client.join(`agent-${i}`, s.token);
            await client.publish(recordOf(identities[i], j, i, 1));
            joined[i] = j;
          }));
        } catch (e) {
          failures.push(`register: ${e.code ?? ''} ${e.message}`);
        }
      }
      if (joined[i] === undefined) throw new Error(`agent-${i} could not register: ${failures.at(-1)}`);
      heartbeatIntervalMs = joined[i].heartbeatIntervalMs;
      client.close();
      if ((i + 1) % 5000 === 0) process.stderr.write(`\r${s.label}: registered ${i + 1}/${AGENTS}`);
    });
    process.stderr.write('\n');
    let seconds = (performance.now() - t0) / 1000;
    r.register = { ...stats(registerMs), perS: AGENTS / seconds, cpuMs: ((cpu() - c0) * 1000) / AGENTS, dbCpuMs: ((dbCpu() - d0) * 1000) / AGENTS };
    r.rssRegisteredMiB = rssEach();
    r.memoryPerAgentKiB = ((r.rssRegisteredMiB[0] - r.rssStartMiB[0]) * 1024) / AGENTS;

    // 2. Heartbeats, closed loop for HEARTBEAT_SECONDS: what the registries sustain, and at what CPU.
    const heartbeatMs = [];
    let sent = 0;
    c0 = cpu();
    d0 = dbCpu();
    t0 = performance.now();
    const until = t0 + HEARTBEAT_SECONDS * 1000;
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < until) {
        const i = sent++ % AGENTS;
        const client = new RegistryClient({ url: urls[i % urls.length], identity: identities[i], network: NETWORK });
        try {
          heartbeatMs.push(await timed(() => client.heartbeat()));
        } catch (e) {
          failures.push(`heartbeat: ${e.code ?? ''} ${e.message}`);
        } finally {
          client.close();
        }
      }
    }));
    seconds = (performance.now() - t0) / 1000;
    const hbCpu = cpu() - c0;
    r.heartbeat = {
      ...stats(heartbeatMs), perS: heartbeatMs.length / seconds, cpuMs: (hbCpu * 1000) / heartbeatMs.length,
      dbCpuMs: ((dbCpu() - d0) * 1000) / heartbeatMs.length, registryCores: hbCpu / seconds,
      intervalMs: heartbeatIntervalMs, neededPerS: AGENTS / (heartbeatIntervalMs / 1000),
    };

    // 3. Reads: by name, and a capability list of AGENTS/100 agents (pages of up to 1,000).
    const readers = identities.slice(0, CONCURRENCY).map((identity, k) => new RegistryClient({ url: urls[k % urls.length], identity, network: NETWORK }));
    const getMs = [];
    c0 = cpu();
    await pool(2000, CONCURRENCY, async (i) => {
      getMs.push(await timed(() => readers[i % CONCURRENCY].get(`agent-${(i * 7919) % AGENTS}`)));
    });
    r.get = { ...stats(getMs), cpuMs: ((cpu() - c0) * 1000) / 2000 };
    const listMs = [];
    await pool(200, CONCURRENCY, async (i) => {
      listMs.push(await timed(async () => {
        const agents = await readers[i % CONCURRENCY].list({ cap: `svc.s${i % 100}` });
        if (agents.length !== Math.ceil((AGENTS - (i % 100)) / 100)) throw new Error(`svc.s${i % 100}: ${agents.length} agents`);
      }));
    });
    r.list = { ...stats(listMs), matching: Math.ceil(AGENTS / 100) };
    for (const c of readers) c.close();

    // 4. Event streams: STREAMS snapshots of the whole fleet at once on the first instance.
    const first = pids[0];
    const before = memoryOf(first).rssMiB;
    resetPeak(first);
    c0 = cpuOf([first]);
    t0 = performance.now();
    let streams = await openStreams(urls[0], identities, failures);
    r.snapshot = {
      agents: streams[0]?.size ?? 0, streams: streams.length, allMs: performance.now() - t0,
      cpuMsPerStream: ((cpuOf([first]) - c0) * 1000) / STREAMS, peakDeltaMiB: memoryOf(first).peakMiB - before,
    };

    // 5. Fan-out: FANOUT publishes on the second instance (seq 2), without streams on it and then
    //    with STREAMS streams on it: the difference is what pushing one change to each stream costs.
    const fanoutHost = urls.length - 1;
    const republish = async (from, seq) => {
      const cpuBefore = cpuOf([pids[fanoutHost]]);
      await pool(FANOUT, CONCURRENCY, async (j) => {
        const i = from + j;
        const client = new RegistryClient({ url: urls[fanoutHost], identity: identities[i], network: NETWORK });
        await client.publish(recordOf(identities[i], joined[i], i, seq));
        client.close();
      });
      return ((cpuOf([pids[fanoutHost]]) - cpuBefore) * 1000) / FANOUT;
    };
    for (const st of streams) st.close();
    const quiet = await republish(0, 2);
    streams = await openStreams(urls[fanoutHost], identities, failures);
    const loud = await republish(FANOUT, 2);
    for (const st of streams) st.close();
    r.fanout = { streams: streams.length, publishCpuMs: quiet, publishWithStreamsCpuMs: loud, perEventPerStreamUs: ((loud - quiet) * 1000) / streams.length };

    r.rssEndMiB = rssEach();
    r.peakMiB = pids.map((p) => memoryOf(p).peakMiB);
    r.dbMiB = await s.dbSize();
    r.dbBytesPerAgent = (r.dbMiB * 2 ** 20) / AGENTS;
    r.rows = await s.rows();
    return r;
  } finally {
    await s.stop();
  }
}

console.log(`registry simulation: ${AGENTS} agents, ${CONCURRENCY} concurrent clients; load average at start: ${loadAverage()}`);
let t = performance.now();
const identities = Array.from({ length: AGENTS }, () => Identity.generate());
console.log(`${AGENTS} identities in ${((performance.now() - t) / 1000).toFixed(1)} s`);
const results = [];
for (const store of STORES) {
  if (store === 'postgres' && postgresUnavailableReason()) {
    console.log(`PostgreSQL skipped: ${postgresUnavailableReason()}`);
    continue;
  }
  t = performance.now();
  results.push(await simulate(store, identities));
  console.log(`${results.at(-1).label}: ${((performance.now() - t) / 1000).toFixed(0)} s; load average ${loadAverage()}`);
}

const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const pp = (s) => `${f(s.p50)} / ${f(s.p99)}`;
const rows = [
  ['join + publish p50 / p99 ms', (r) => pp(r.register)],
  ['registrations/s', (r) => f(r.register.perS, 0)],
  ['registry / database CPU ms per registration', (r) => `${f(r.register.cpuMs, 2)} / ${f(r.register.dbCpuMs, 2)}`],
  ['registry RSS per agent KiB (each instance)', (r) => f(r.memoryPerAgentKiB, 2)],
  ['heartbeat p50 / p99 ms', (r) => pp(r.heartbeat)],
  ['heartbeats/s sustained', (r) => f(r.heartbeat.perS, 0)],
  ['heartbeats/s needed (interval s)', (r) => `${f(r.heartbeat.neededPerS, 0)} (${f(r.heartbeat.intervalMs / 1000, 0)})`],
  ['registry / database CPU ms per heartbeat', (r) => `${f(r.heartbeat.cpuMs, 2)} / ${f(r.heartbeat.dbCpuMs, 2)}`],
  ['registry cores busy during heartbeats', (r) => f(r.heartbeat.registryCores, 2)],
  ['lookup by name p50 / p99 ms', (r) => pp(r.get)],
  ['registry CPU ms per lookup', (r) => f(r.get.cpuMs, 2)],
  ['capability list p50 / p99 ms (agents)', (r) => `${pp(r.list)} (${r.list.matching})`],
  ['snapshots: streams, all ms', (r) => `${r.snapshot.streams}, ${f(r.snapshot.allMs, 0)}`],
  ['  registry CPU ms per snapshot (agents)', (r) => `${f(r.snapshot.cpuMsPerStream, 1)} (${r.snapshot.agents})`],
  ['  registry peak RSS growth MiB', (r) => f(r.snapshot.peakDeltaMiB, 1)],
  ['publish CPU ms: no streams / with streams', (r) => `${f(r.fanout.publishCpuMs, 2)} / ${f(r.fanout.publishWithStreamsCpuMs, 2)}`],
  ['  fan-out µs per event per stream', (r) => f(r.fanout.perEventPerStreamUs, 1)],
  ['registry RSS registered / end MiB', (r) => `${r.rssRegisteredMiB.map((x) => f(x, 0)).join('+')} / ${r.rssEndMiB.map((x) => f(x, 0)).join('+')}`],
  ['database MiB (bytes per agent)', (r) => `${f(r.dbMiB, 1)} (${f(r.dbBytesPerAgent, 0)})`],
  ['failed requests (first)', (r) => `${r.failures.length}${r.failures.length ? ` (${r.failures[0].slice(0, 40)})` : ''}`],
  ['rows: members / records / replay windows', (r) => (r.rows ? `${r.rows.members} / ${r.rows.records} / ${r.rows.replay_windows}` : '-')],
];
console.log(`\n${'measure'.padEnd(46)}${results.map((r) => r.label.padStart(28)).join('')}`);
for (const [name, get] of rows) console.log(`${name.padEnd(46)}${results.map((r) => get(r).padStart(28)).join('')}`);
console.log(JSON.stringify(results));
