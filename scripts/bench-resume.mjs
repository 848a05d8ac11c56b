#!/usr/bin/env node
// What a registry restart (SQLite) or an instance's death (PostgreSQL pair) costs the registry
// that takes the event streams back: STREAMS agents' streams (each holding the whole fleet of
// AGENTS) reconnect, by view digest (the daemon's client) or, as before, to a snapshot each.
// Measured on the registry that answers them, from the moment they reconnect until every stream
// is resumed or has its snapshot: its CPU and the bytes it wrote (/proc/PID/io wchar, sockets
// included), per stream. Both ways in the same run, alternating; everything on loopback.
//
// Run after `npm run build`, under the bench lock:
//   flock /tmp/agentvpn-bench.lock node scripts/bench-resume.mjs
// Env: AGENTS (10000), STREAMS (32), CHANGED (20: agents that publish a new record while the
//   streams are away), STORES (sqlite,postgres).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Identity, NETWORK, RegistryClient, cpuOf, loadAverage, pool, postgresUnavailableReason, recordOf, startPostgres, startRegistry, stopChild, tokenFor, writtenBytes,
} from './lib/registry-load.mjs';

const AGENTS = Number(process.env.AGENTS ?? 10_000);
const STREAMS = Number(process.env.STREAMS ?? 32);
const CHANGED = Number(process.env.CHANGED ?? 20);
const STORES = (process.env.STORES ?? 'sqlite,postgres').split(',');

/** The agents here send no heartbeats: an hour keeps them online, as heartbeating agents stay (else the streams' views churn as they go offline). */
const OFFLINE_AFTER = ['--offline-after', '3600'];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, check, timeoutMs = 120_000) {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** STREAMS watchers of `url` (agents 0..STREAMS-1), counting snapshots and resumes; `digest`: with a `gone` handler (what the daemon's client sends). */
async function openWatchers(url, identities, digest) {
  const watchers = identities.slice(0, STREAMS).map((identity) => {
    const w = { snapshots: 0, resumed: 0 };
    const client = new RegistryClient({ url, identity, network: NETWORK });
    const handlers = { snapshot: () => void w.snapshots++, change: () => {}, resumed: () => void w.resumed++, ...(digest ? { gone: () => {} } : {}) };
    const watch = client.watch(handlers);
    w.client = client;
    w.close = () => {
      watch.close();
      client.close();
    };
    return w;
  });
  await until('the first snapshots', () => watchers.every((w) => w.snapshots === 1));
  return watchers;
}

/** Starts counting `pid`'s CPU and bytes written; `back(moved)` waits until every moved watcher is back (resumed, or a second snapshot). */
function measure(pid) {
  const c0 = cpuOf([pid]);
  const w0 = writtenBytes(pid);
  const t0 = performance.now();
  return {
    back: async (moved) => {
      await until('the streams back', () => moved.every((w) => w.resumed > 0 || w.snapshots > 1));
      return {
        streams: moved.length, resumed: moved.filter((w) => w.resumed > 0 && w.snapshots === 1).length, allMs: performance.now() - t0,
        cpuMsPerStream: ((cpuOf([pid]) - c0) * 1000) / moved.length, kbPerStream: (writtenBytes(pid) - w0) / 1024 / moved.length,
      };
    },
  };
}

async function register(url, token, identities) {
  const joined = new Array(identities.length);
  await pool(identities.length, 16, async (i) => {
    const client = new RegistryClient({ url, identity: identities[i], network: NETWORK });
    joined[i] = await client.join(`agent-${i}`, token);
    await client.publish(recordOf(identities[i], joined[i], i, 1));
    client.close();
  });
  return joined;
}

/** CHANGED agents (from the end of the list) publish seq `seq`: what happened while the streams were away. */
async function change(url, identities, joined, seq) {
  for (let k = 0; k < CHANGED; k++) {
    const i = identities.length - 1 - k;
    const client = new RegistryClient({ url, identity: identities[i], network: NETWORK });
    await client.publish(recordOf(identities[i], joined[i], i, seq));
    client.close();
  }
}

async function sqlite() {
  const dir = mkdtempSync(join(tmpdir(), 'agentvpn-bench-resume-'));
  const db = join(dir, 'registry.db');
  const token = tokenFor(db, AGENTS + 10);
  let { child, url } = await startRegistry(['--db', db, ...OFFLINE_AFTER]);
  const listen = new URL(url).host;
  try {
    const identities = Array.from({ length: AGENTS }, () => Identity.generate());
    const joined = await register(url, token, identities);
    const out = {};
    for (const [k, digest] of [['digest', true], ['snapshot', false], ['digest again', true]].entries()) {
      const watchers = await openWatchers(url, identities, digest[1]);
      await stopChild(child);
      ({ child } = await startRegistry(['--db', db, ...OFFLINE_AFTER], listen));
      const m = measure(child.pid);
      await change(url, identities, joined, 2 + k);
      out[digest[0]] = await m.back(watchers);
      for (const w of watchers) w.close();
      await sleep(200);
    }
    return { label: 'SQLite: registry restart', ...out };
  } finally {
    await stopChild(child);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function postgres() {
  const pg = await startPostgres();
  const dir = mkdtempSync(join(tmpdir(), 'agentvpn-bench-resume-'));
  const regArgs = (k) => [...OFFLINE_AFTER, '--db', pg.url, '--witness-key', join(dir, 'witness.key'), '--audit-dir', join(dir, `audit-${k}`)];
  const children = [];
  try {
    const token = tokenFor(pg.url, AGENTS + 10);
    const survivor = await startRegistry(regArgs(0));
    children.push(survivor.child);
    const identities = Array.from({ length: AGENTS }, () => Identity.generate());
    const joined = await register(survivor.url, token, identities);
    const out = {};
    for (const [k, [label, digest]] of [['digest', true], ['snapshot', false], ['digest again', true]].entries()) {
      // A fresh instance for the watchers (each picks an instance by its ID): those on it move to the survivor when it stops.
      const doomed = await startRegistry(regArgs(k + 1));
      children.push(doomed.child);
      const watchers = await openWatchers(`${doomed.url},${survivor.url}`, identities, digest);
      // Only the watchers on the instance that stops move (each client picks an instance by its ID).
      const moved = watchers.filter((w) => w.client.url === doomed.url);
      const m = measure(survivor.child.pid);
      await stopChild(doomed.child);
      await change(survivor.url, identities, joined, 2 + k);
      out[label] = moved.length ? await m.back(moved) : null;
      for (const w of watchers) w.close();
      await sleep(200);
    }
    return { label: 'PostgreSQL pair: an instance stops', ...out };
  } finally {
    for (const c of children) await stopChild(c);
    await pg.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log(`resume benchmark: ${AGENTS} agents, ${STREAMS} streams, ${CHANGED} records changed meanwhile; load average ${loadAverage()}`);
for (const store of STORES) {
  if (store === 'postgres' && postgresUnavailableReason()) {
    console.log(`PostgreSQL skipped: ${postgresUnavailableReason()}`);
    continue;
  }
  const r = store === 'sqlite' ? await sqlite() : await postgres();
  console.log(`\n${r.label}`);
  for (const how of ['digest', 'snapshot', 'digest again']) {
    const m = r[how];
    if (!m) {
      console.log(`  ${how.padEnd(13)} (no stream was on the stopped instance)`);
      continue;
    }
    console.log(`  ${how.padEnd(13)} ${m.streams} streams back in ${m.allMs.toFixed(0)} ms (${m.resumed} resumed): registry CPU ${m.cpuMsPerStream.toFixed(1)} ms and ${m.kbPerStream.toFixed(0)} KB written per stream`);
  }
}
console.log(`load average at end: ${loadAverage()}`);
