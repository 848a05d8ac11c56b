// Flood benchmark driver (see scripts/bench-flood): what floods at a tunnel endpoint's UDP port do
// to the tunnel, for agentvpn (static, fleet on a direct path, fleet relayed through the
// registry's built-in relay) and trixie's wireguard-go 0.0.20231211 (static) side by side.
//
// Topology: A and B joined by a link; the attacker X on a link of its own to the victim (B's
// daemon, or the relay for the relay floods), so a flood costs the victim's CPU, not the tunnel's
// wire. A pings B through the tunnel (every 10 ms) while X floods; each row reports the flood's
// offered and achieved rate, ping loss and RTT, and which of the victim's drop counters moved
// (`agentvpn status --json`: dropped.*, pathStats.*), from which the shedding rates follow.
import { readFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { parseArgs } from 'node:util';
import {
  Lab, fetchTrixieBinaries, labUnavailableReasons, listNamespaces, pingStats, pingUnderFlood, runCommand, startAgentVpn,
  startLabAgent, startLabRegistry, startWireguardGo, waitFor, waitForFleet, waitForPing, wgKeyPair,
} from '../dist/lab/index.js';

const SECTIONS = ['static', 'wireguard-go', 'fleet', 'relay'];
const { values: args } = parseArgs({
  options: {
    only: { type: 'string' },
    pings: { type: 'string', default: '300' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log(`usage: npm run bench:flood -- [--only ${SECTIONS.join(',')}] [--pings N (every 10 ms, default 300)] [--json]`);
  process.exit(0);
}
const only = args.only ? args.only.split(',').map((s) => s.trim()) : SECTIONS;
const bad = only.filter((s) => !SECTIONS.includes(s));
const PINGS = { count: Number(args.pings), intervalSec: 0.01 };
if (bad.length || !(PINGS.count > 0)) {
  console.error(`bench-flood: --only takes ${SECTIONS.join(',')}; --pings a positive number`);
  process.exit(2);
}
const reasons = labUnavailableReasons(['ip', 'ping', 'iptables', 'curl', 'nsenter', 'unshare', 'wg']);
if (reasons.length) {
  console.error(`bench-flood: cannot run:\n  ${reasons.join('\n  ')}`);
  process.exit(1);
}
const progress = (msg) => process.stderr.write(`bench-flood: ${msg}\n`);

// The rates: the issue's figures (class 3: 30k and 156k initiations/s, 170k disco/s; class 6:
// 140k hellos/s; class 7: 40k and 144k frames/s) and a sweep to find where shedding starts.
const HANDSHAKE_SWEEP = [10_000, 30_000, 150_000];
const GARBAGE_RATE = 150_000;
const DISCO_RATE = 170_000;
const RELAY_HELLO_RATE = 140_000;
/** 0 = as fast as the sender goes (~500k/s here): with a per-agent relay limit, 144k/s alone does not hurt a relayed pair. */
const RELAY_SEND_RATES = [40_000, 144_000, 0];
/** relay-send payload: a small WireGuard packet's worth. */
const RELAY_SEND_SIZE = 128;
const rateLabel = (rate) => (rate ? `${rate / 1000}k` : 'max');
const ATTACKER = '198.51.100.1';
const VICTIM_SIDE = '198.51.100.2';

/** Numeric counters of a status, flattened: dropped.*, pathStats.*, peer.dropped.* (summed over peers). */
function counters(status) {
  const out = {};
  for (const [k, v] of Object.entries(status.dropped ?? {})) out[`dropped.${k}`] = v;
  for (const [k, v] of Object.entries(status.pathStats ?? {})) out[`pathStats.${k}`] = v;
  for (const [k, v] of Object.entries(status.relay?.dropped ?? {})) out[`relay.dropped.${k}`] = v;
  if (status.relay) out['relay.helloVerifications'] = status.relay.helloVerifications;
  for (const p of status.peers ?? []) {
    for (const [k, v] of Object.entries(p.dropped ?? {})) out[`peer.dropped.${k}`] = (out[`peer.dropped.${k}`] ?? 0) + v;
  }
  return out;
}

function moved(before, after) {
  const d = {};
  for (const [k, v] of Object.entries(after)) if (typeof v === 'number' && v - (before[k] ?? 0) > 0) d[k] = v - (before[k] ?? 0);
  return d;
}

/** One measurement: ping A→B while `spec` floods from X (no flood: spec null). */
async function measure(lab, { system, label, x, spec, pingNs, dst, status }) {
  const before = status ? counters(await status()) : null;
  const row = { system, flood: label, kind: spec?.kind ?? 'none', offeredPps: spec?.rate ?? 0, achievedPps: 0, error: null };
  try {
    if (spec) {
      const r = await pingUnderFlood(lab, x, spec, pingNs, dst, PINGS);
      Object.assign(row, { achievedPps: r.flood.achievedPps, seconds: r.flood.seconds, ping: r.ping });
    } else {
      row.ping = await pingStats(lab, pingNs, dst, { ...PINGS, timeoutSec: 1 });
    }
    if (status) row.moved = moved(before, counters(await status()));
  } catch (e) {
    row.error = e instanceof Error ? e.message.split('\n')[0] : String(e);
  }
  const p = row.ping;
  progress(`${system} ${label}: ${row.error ?? `${spec ? `flood ${row.achievedPps}/s, ` : ''}${p.lossPct.toFixed(1)} % loss, median ${p.medianMs ?? '–'} ms${row.moved ? `, moved ${JSON.stringify(row.moved)}` : ''}`}`);
  return row;
}

/** The floods a static system gets; `keys` = { victim, member }: base64 WireGuard keys of B and of its peer A. */
function staticFloods(target, keys, withRelayFloods) {
  const floods = HANDSHAKE_SWEEP.map((rate) => ({ label: `handshake ${rate / 1000}k`, spec: { kind: 'handshake', target, key: keys.victim, rate } }));
  floods.push({ label: `garbage ${GARBAGE_RATE / 1000}k`, spec: { kind: 'garbage', target, rate: GARBAGE_RATE } });
  if (withRelayFloods) {
    // wireguard-go gets the agentvpn fleet's floods too: the same datagrams at its port (a SEND
    // needs a relay session, so it is sent as garbage of the same size: to wireguard-go both are
    // an unknown message type).
    floods.push({ label: `disco ${DISCO_RATE / 1000}k`, spec: { kind: 'disco', target, key: keys.member, rate: DISCO_RATE } });
    floods.push({ label: `relay-hello ${RELAY_HELLO_RATE / 1000}k`, spec: { kind: 'relay-hello', target, rate: RELAY_HELLO_RATE } });
    for (const rate of RELAY_SEND_RATES) {
      floods.push({ label: `relay-send ${rateLabel(rate)}`, spec: { kind: 'garbage', target, rate, size: 33 + RELAY_SEND_SIZE } });
    }
  }
  return floods;
}

/** A–B pair plus attacker X on B; runs the static systems one after the other. */
async function staticSections(results, trixie) {
  const lab = new Lab();
  try {
    const a = await lab.addNamespace('fa');
    const b = await lab.addNamespace('fb');
    await lab.connect(a, b, { a: '192.0.2.1/24', b: '192.0.2.2/24', ifA: 'eth0', ifB: 'eth0' });
    const x = await lab.addNamespace('fx');
    await lab.connect(x, b, { a: `${ATTACKER}/24`, b: `${VICTIM_SIDE}/24`, ifA: 'eth0', ifB: 'from-x' });
    const [ka, kb] = await Promise.all([wgKeyPair(), wgKeyPair()]);
    const cfg = (me, them, v4, peerV4, port, endpoint) => ({
      privateKey: me.privateKey, listenPort: port, addresses: [`${v4}/24`],
      peers: [{ publicKey: them.publicKey, allowedIps: [`${peerV4}/32`], endpoint }],
    });
    const cfgA = cfg(ka, kb, '100.64.0.1', '100.64.0.2', 51820, '192.0.2.2:51821');
    const cfgB = cfg(kb, ka, '100.64.0.2', '100.64.0.1', 51821, '192.0.2.1:51820');
    const keys = { victim: kb.publicKey, member: ka.publicKey };
    const target = `${VICTIM_SIDE}:51821`;
    const systems = [];
    if (only.includes('static')) {
      systems.push({ name: 'agentvpn-static', relayFloods: false, start: async () => {
        const pa = await startAgentVpn(lab, a, cfgA, 'agentvpn0');
        const pb = await startAgentVpn(lab, b, cfgB, 'agentvpn0');
        const status = async () => JSON.parse((await pb.cli(['status', '--json'], { check: true })).stdout);
        return { status, stop: async () => { await pa.stop(); await pb.stop(); } };
      } });
    }
    if (only.includes('wireguard-go')) {
      systems.push({ name: 'wireguard-go', relayFloods: true, start: async () => {
        const pa = await startWireguardGo(lab, a, cfgA, 'wg0', { binary: trixie.wireguardGo });
        const pb = await startWireguardGo(lab, b, cfgB, 'wg0', { binary: trixie.wireguardGo });
        return { status: null, stop: async () => { await pa.stop(); await pb.stop(); } };
      } });
    }
    for (const sys of systems) {
      progress(`${sys.name}: starting`);
      let running;
      try {
        running = await sys.start();
        await waitForPing(lab, a, '100.64.0.2', 20_000);
        const common = { system: sys.name, x, pingNs: a, dst: '100.64.0.2', status: running.status };
        results.push(await measure(lab, { ...common, label: 'no flood', spec: null }));
        for (const f of staticFloods(target, keys, sys.relayFloods)) results.push(await measure(lab, { ...common, ...f }));
      } catch (e) {
        results.push({ system: sys.name, flood: 'setup', error: e.message.split('\n')[0] });
        progress(`${sys.name}: FAILED: ${e.message.split('\n')[0]}`);
      } finally {
        await running?.stop().catch(() => {});
      }
    }
  } finally {
    await lab.cleanup();
  }
}

/**
 * A registry (with its relay) and agents A, B on a router; X on its own links to B and to the
 * registry, and a member of the network (for relay-send). First A–B direct under disco and
 * handshake floods at B, then UDP between A and B is blocked so they are relayed, under relay floods.
 */
async function fleetSections(results) {
  const lab = new Lab();
  try {
    const hub = await lab.addRouter('hub');
    const reg = await lab.addNamespace('reg');
    await lab.connect(hub, reg, { a: '203.0.113.1/24', b: '203.0.113.10/24', ifB: 'eth0' });
    await lab.ip(reg, ['route', 'add', 'default', 'via', '203.0.113.1']);
    const registry = await startLabRegistry(lab, reg, '203.0.113.10');
    const agents = [];
    for (const [i, name] of ['a', 'b'].entries()) {
      const ns = await lab.addNamespace(name);
      await lab.connect(hub, ns, { a: `192.0.2.${16 * i + 1}/28`, b: `192.0.2.${16 * i + 2}/28`, ifB: 'eth0' });
      await lab.ip(ns, ['route', 'add', 'default', 'via', `192.0.2.${16 * i + 1}`]);
      agents.push(await startLabAgent(lab, ns, `bench-${name}`, registry));
    }
    const [a, b] = agents;
    const x = await lab.addNamespace('x');
    await lab.connect(x, b.ns, { a: `${ATTACKER}/28`, b: `${VICTIM_SIDE}/28`, ifA: 'eth0', ifB: 'from-x' });
    await lab.connect(x, reg, { a: '198.51.100.17/28', b: '198.51.100.18/28', ifA: 'eth1', ifB: 'from-x' });
    await lab.addRoute(x, '203.0.113.10/32', '198.51.100.18');
    // X joins as a member (its identity then sends the relay-send flood) and leaves its daemon off,
    // so the daemon's own relay session does not fight the flood's for the key.
    const member = await startLabAgent(lab, x, 'bench-x', registry);
    await waitForFleet([a, b, member], 30_000);
    await lab.kill(member.proc);
    const statusOf = (agent) => agent.json(['status']);
    const pathKinds = async () => [(await statusOf(a)).peers.find((p) => p.path)?.path?.kind, (await statusOf(b)).peers.find((p) => p.path)?.path?.kind];
    const failovers = () => [a, b].reduce((n, g) => n + readFileSync(g.proc.logFile, 'utf8').split('direct path stopped answering').length - 1, 0);
    const ipB = (await b.json(['id'])).ipv4;
    await waitForPing(lab, a.ns, ipB, 20_000);
    const common = { x, pingNs: a.ns, dst: ipB, status: () => statusOf(b) };

    if (only.includes('fleet')) {
      await waitFor(async () => (await pathKinds()).every((k) => k === 'direct'), { timeoutMs: 20_000, what: 'direct path A–B' });
      const target = `${VICTIM_SIDE}:51820`;
      const keyA = (await statusOf(a)).publicKey;
      const keyB = (await statusOf(b)).publicKey;
      results.push(await measure(lab, { ...common, system: 'agentvpn-fleet', label: 'no flood', spec: null }));
      const floods = [
        { label: `disco ${DISCO_RATE / 1000}k`, spec: { kind: 'disco', target, key: keyA, rate: DISCO_RATE } },
        ...HANDSHAKE_SWEEP.map((rate) => ({ label: `handshake ${rate / 1000}k`, spec: { kind: 'handshake', target, key: keyB, rate } })),
      ];
      for (const f of floods) {
        const before = failovers();
        const row = await measure(lab, { ...common, system: 'agentvpn-fleet', ...f });
        row.failovers = failovers() - before;
        row.paths = (await pathKinds()).join('/');
        results.push(row);
      }
    }

    if (only.includes('relay')) {
      progress('relay: blocking UDP between A and B so the pair is relayed');
      for (const [s, d] of [['192.0.2.0/28', '192.0.2.16/28'], ['192.0.2.16/28', '192.0.2.0/28']]) {
        await lab.iptables(hub, ['-I', 'FORWARD', '-s', s, '-d', d, '-p', 'udp', '-j', 'DROP']);
      }
      await waitFor(async () => {
        await lab.exec(a.ns, ['ping', '-c', '5', '-i', '0.2', '-W', '1', ipB]);
        return (await pathKinds()).every((k) => k === 'relay');
      }, { timeoutMs: 40_000, intervalMs: 100, what: 'A–B relayed' });
      const target = '203.0.113.10:7443';
      // The relay's counters (hello verifications, drops by reason) come from the registry's /v1/stats.
      const relayStats = async () => JSON.parse((await lab.run(reg, ['curl', '-sS', '--fail', '-H', `Authorization: Bearer ${registry.token}`,
        `${registry.url}/v1/stats?network=${registry.network}`])).stdout).relay;
      common.status = async () => ({ ...(await statusOf(b)), relay: await relayStats() });
      results.push(await measure(lab, { ...common, system: 'agentvpn-relayed', label: 'no flood', spec: null }));
      const floods = [
        { label: `relay-hello ${RELAY_HELLO_RATE / 1000}k`, spec: { kind: 'relay-hello', target, rate: RELAY_HELLO_RATE } },
        ...RELAY_SEND_RATES.map((rate) => ({
          label: `relay-send ${rateLabel(rate)}`, spec: { kind: 'relay-send', target, rate, identityDir: member.stateDir, size: RELAY_SEND_SIZE },
        })),
      ];
      for (const f of floods) {
        const row = await measure(lab, { ...common, system: 'agentvpn-relayed', ...f });
        row.paths = (await pathKinds()).join('/');
        results.push(row);
      }
    }
  } finally {
    await lab.cleanup();
  }
}

// --- report ---
const fmt = (v, d = 1) => (v == null || Number.isNaN(v) ? '–' : Number(v).toFixed(d));
const kpps = (v) => (v ? `${fmt(v / 1000, 0)}k` : '–');
const offered = (r) => (r.kind === 'none' ? '–' : r.offeredPps ? kpps(r.offeredPps) : 'max');

function table(head, rows) {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => (i < 2 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join('  ').trimEnd();
  return [line(head), ...rows.map(line)].join('\n');
}

/** Counters of traffic carried (discoIn, relayedOut, ...), not of anything refused. */
const TRAFFIC_COUNTER = /(In|Out)$/;

/** For each system and counter: the lowest offered rate at which it moved, and how fast it moved there. */
function shedding(results) {
  const out = [];
  for (const system of [...new Set(results.map((r) => r.system))]) {
    const first = new Map();
    for (const r of results.filter((x) => x.system === system && x.kind !== 'none' && x.moved)) {
      for (const [k, n] of Object.entries(r.moved).filter(([name]) => !TRAFFIC_COUNTER.test(name))) {
        const prev = first.get(k);
        const rank = (x) => x.offeredPps || Infinity; // "max" is the highest rate
        if (!prev || rank(r) < rank(prev)) first.set(k, { offeredPps: r.offeredPps, flood: r.flood, perSec: n / (r.seconds || 1) });
      }
    }
    // Counters that move by less than one a second are the tunnel's own noise, not shedding.
    for (const [k, v] of first) if (v.perSec >= 1) out.push({ system, counter: k, ...v });
  }
  return out;
}

function sideBySide(results) {
  const wg = new Map(results.filter((r) => r.system === 'wireguard-go' && r.ping).map((r) => [r.flood, r]));
  return results.filter((r) => r.system !== 'wireguard-go' && r.ping).map((r) => {
    const w = wg.get(r.flood);
    return {
      flood: r.flood, agentvpn: r.system, lossPct: r.ping.lossPct, medianMs: r.ping.medianMs,
      wgLossPct: w?.ping.lossPct ?? null, wgMedianMs: w?.ping.medianMs ?? null,
      lossDiffPts: w ? r.ping.lossPct - w.ping.lossPct : null,
      rttRatio: w && r.ping.medianMs && w.ping.medianMs ? r.ping.medianMs / w.ping.medianMs : null,
    };
  });
}

const started = new Date();
let trixie = null;
if (only.includes('wireguard-go')) {
  try {
    trixie = await fetchTrixieBinaries();
  } catch (e) {
    console.error(`bench-flood: cannot get trixie's wireguard-go: ${e.message}`);
    process.exit(1);
  }
}
/** The Debian version of the unpacked wireguard-go package (its binary calls itself v0.0.20230223). */
async function trixieWgVersion() {
  const r = await runCommand(['sh', '-c', 'dpkg-deb -f "$(ls .cache/trixie/debs/wireguard-go_*.deb | head -n 1)" Version']);
  return r.code === 0 ? r.stdout.trim() : 'unknown';
}
const wgVersion = trixie ? await trixieWgVersion() : null;

const results = [];
try {
  if (only.includes('static') || only.includes('wireguard-go')) await staticSections(results, trixie);
  if (only.includes('fleet') || only.includes('relay')) await fleetSections(results);
} finally {
  const left = (await listNamespaces()).filter((n) => /^avl\d+-/.test(n) && n.startsWith(`avl${process.pid}-`));
  if (left.length) progress(`warning: namespaces left behind: ${left.join(', ')}`);
}
const sbs = sideBySide(results);
const shed = shedding(results);
const meta = {
  date: started.toISOString(), seconds: Math.round((Date.now() - started.getTime()) / 1000), pings: `${PINGS.count} every 10 ms`,
  cpus: cpus().length, kernel: release(), node: process.version, wireguardGo: wgVersion ? `${wgVersion} (trixie, unpacked)` : null,
};

if (args.json) {
  console.log(JSON.stringify({ ...meta, results, sideBySide: sbs, shedding: shed }, null, 2));
} else {
  console.log(`\nFlood benchmark ${meta.date}: ${meta.cpus} CPUs, kernel ${meta.kernel}, node ${meta.node}, wireguard-go ${meta.wireguardGo ?? '(not run)'}`);
  console.log(`A pings B through the tunnel (${meta.pings}) while X floods B's UDP port (the relay's for relay floods); ${meta.seconds} s\n`);
  console.log(table(['system', 'flood', 'offered/s', 'achieved/s', 'loss %', 'median ms', 'p90 ms', 'counters moved'], results.map((r) => [
    r.system, r.flood, offered(r), kpps(r.achievedPps), r.ping ? fmt(r.ping.lossPct) : 'error', fmt(r.ping?.medianMs, 2), fmt(r.ping?.p90Ms, 2),
    r.error ? r.error.slice(0, 80) : [Object.entries(r.moved ?? {}).map(([k, v]) => `${k}+${v}`).join(' '), r.failovers ? `FAILOVERS ${r.failovers}` : '',
      r.paths && r.kind !== 'none' ? `path ${r.paths}` : ''].filter(Boolean).join(' '),
  ])));
  console.log('\nSide by side with wireguard-go (same datagrams, same rate, at its port; "max" rates are each sender\'s own):\n');
  console.log(table(['flood', 'agentvpn', 'loss %', 'median ms', 'wg-go loss %', 'wg-go median ms', 'loss Δ pts', 'RTT ×'], sbs.map((s) => [
    s.flood, s.agentvpn, fmt(s.lossPct), fmt(s.medianMs, 2), fmt(s.wgLossPct), fmt(s.wgMedianMs, 2),
    s.lossDiffPts == null ? '–' : `${s.lossDiffPts >= 0 ? '+' : ''}${fmt(s.lossDiffPts)}`, fmt(s.rttRatio, 2),
  ])));
  console.log('\nWhere each defence starts to shed (lowest offered rate at which the victim\'s counter moved):\n');
  console.log(shed.length ? table(['system', 'counter', 'from offered/s', 'in flood', 'counted/s there'], shed.map((s) => [
    s.system, s.counter, s.offeredPps ? kpps(s.offeredPps) : 'max', s.flood, fmt(s.perSec, 0),
  ])) : '(no counters moved)');
}
process.exitCode = results.some((r) => r.error) ? 1 : 0;
