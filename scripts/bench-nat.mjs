#!/usr/bin/env node
// Time from the first packet to a peer behind NAT until the path is direct (a benchmark, not a test).
//
// Two agents, each behind its own port-restricted NAT (plain MASQUERADE), a registry with its relay
// on the "internet". For each sample the pair is left idle until neither trusts its old direct path,
// then one ping is sent; the time until the sender's daemon logs "direct path" for that peer is the
// figure. Run as root after `npm run build`: node scripts/bench-nat.mjs [--samples 5] [--json]
import { readFileSync } from 'node:fs';
import { Lab, buildNatWorld, findAgent, sleep, startLabAgent, startLabRegistry, waitFor, waitForFleet } from '../dist/lab/index.js';
import { paths } from '../dist/paths/constants.js';

const args = process.argv.slice(2);
const samples = Number(args[args.indexOf('--samples') + 1]) || 5;
const json = args.includes('--json');
const log = (m) => { if (!json) process.stderr.write(`${m}\n`); };

function directLogTimes(file) {
  return readFileSync(file, 'utf8').split('\n').filter((l) => l.includes('"direct path"')).map((l) => JSON.parse(l).time);
}

const lab = new Lab();
try {
  const world = await buildNatWorld(lab, { sites: [{ name: 'home', kind: 'port-restricted', agents: ['alice'] }, { name: 'office', kind: 'port-restricted', agents: ['bob'] }] });
  const registry = await startLabRegistry(lab, world.registryNs, world.registryIp);
  const alice = await startLabAgent(lab, findAgent(world, 'alice').ns, 'alice', registry, { env: { AGENTVPN_LOG_LEVEL: 'info' } });
  const bob = await startLabAgent(lab, findAgent(world, 'bob').ns, 'bob', registry);
  await waitForFleet([alice, bob]);
  const bobIp = (await bob.json(['id'])).ipv4;
  const results = [];
  for (let i = 0; i < samples; i++) {
    log(`sample ${i + 1}/${samples}: idling until the direct path is no longer trusted (up to ${Math.round((paths.activeWindowMs + paths.idleTrustMs) / 1000)} s)`);
    await waitFor(async () => (await alice.json(['status'])).peers.every((p) => p.path?.kind === 'relay'), { timeoutMs: paths.activeWindowMs + paths.idleTrustMs + 20_000, intervalMs: 500, what: 'path back to relay' });
    await sleep(1000);
    const before = directLogTimes(alice.proc.logFile).length;
    const t0 = Date.now();
    await lab.exec(alice.ns, ['ping', '-c', '1', '-W', '2', bobIp]);
    const t1 = await waitFor(() => directLogTimes(alice.proc.logFile)[before], { timeoutMs: 10_000, intervalMs: 5, what: 'direct path' });
    results.push(t1 - t0);
    log(`  first packet -> direct: ${t1 - t0} ms`);
  }
  const sorted = [...results].sort((a, b) => a - b);
  const summary = { samples: results, medianMs: sorted[Math.floor(sorted.length / 2)], maxMs: sorted[sorted.length - 1], targetMs: 1000 };
  if (json) process.stdout.write(`${JSON.stringify(summary)}\n`);
  else process.stdout.write(`first packet to direct path (port-restricted <-> port-restricted): median ${summary.medianMs} ms, max ${summary.maxMs} ms over ${results.length} samples (target < 1000 ms)\n`);
} finally {
  await lab.cleanup();
}
