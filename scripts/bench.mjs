// Benchmark driver (see scripts/bench): one system at a time between the same two namespaces:
// iperf3 single TCP stream (with the host's CPU seconds per GB moved), 4 parallel streams, UDP at
// the highest rate tried whose loss stays under 1 %, ping RTT; then agentvpn's fleet mode relayed
// through the registry's relay; then a table with agentvpn's ratios against each reference.
import { readFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { parseArgs } from 'node:util';
import {
  Lab,
  fetchTrixieBinaries,
  iperf3,
  iperf3Udp,
  labUnavailableReasons,
  listNamespaces,
  ping,
  runCommand,
  startAgentVpn,
  startHubFleet,
  startNebula,
  startWireguardGo,
  waitFor,
  waitForPing,
  wgKeyPair,
} from '../dist/lab/index.js';

/** Debian bookworm's wireguard-go and nebula from PATH, and trixie's, unpacked by scripts/fetch-trixie.sh. */
const SYSTEMS = ['veth', 'wireguard-go', 'wireguard-go-trixie', 'nebula', 'nebula-trixie', 'agentvpn'];
const REFERENCES = SYSTEMS.filter((s) => s !== 'veth' && s !== 'agentvpn');
const ALIASES = { raw: 'veth', 'raw-veth': 'veth', wg: 'wireguard-go', wireguard: 'wireguard-go' };

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '10' },
    only: { type: 'string' },
    json: { type: 'boolean', default: false },
    'ping-count': { type: 'string', default: '50' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (args.help) {
  console.log(`usage: npm run bench -- [--duration SECONDS] [--only ${SYSTEMS.join(',')}] [--ping-count N] [--json]`);
  process.exit(0);
}
const duration = Number(args.duration);
const pingCount = Number(args['ping-count']);
if (!(duration > 0) || !(pingCount > 0)) {
  console.error('bench: --duration and --ping-count must be positive numbers');
  process.exit(2);
}
const only = args.only ? args.only.split(',').map((s) => s.trim()).filter(Boolean).map((s) => ALIASES[s] ?? s) : SYSTEMS;
const unknown = only.filter((s) => !SYSTEMS.includes(s));
if (unknown.length) {
  console.error(`bench: unknown system(s) ${unknown.join(', ')}; choose from ${SYSTEMS.join(', ')}`);
  process.exit(2);
}
const reasons = labUnavailableReasons(['ip', 'iperf3', 'ping', 'ss', 'nsenter', 'unshare', 'wg',
  ...(only.includes('wireguard-go') ? ['wireguard-go'] : []), ...(only.includes('nebula') ? ['nebula', 'nebula-cert'] : [])]);
if (reasons.length) {
  console.error(`bench: cannot run:\n  ${reasons.join('\n  ')}`);
  process.exit(1);
}

const progress = (msg) => process.stderr.write(`bench: ${msg}\n`);
const version = async (argv, re) => {
  const r = await runCommand(argv).catch(() => ({ stdout: '', stderr: '' }));
  return (re.exec(r.stdout + r.stderr)?.[1] ?? 'unknown').trim();
};

/** Host CPU seconds (every process and the kernel, idle and iowait excepted) from /proc/stat. */
function hostCpuSeconds() {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = fields;
  return (user + nice + system + irq + softirq + (steal ?? 0)) / 100; // USER_HZ is 100 on Linux
}

/** UDP rates tried, as fractions of the single-stream TCP rate, highest first: the first under 1 % loss is reported. */
const UDP_STEPS = [1.2, 0.9, 0.65, 0.45, 0.3, 0.2, 0.12];

/** iperf3 -u at falling rates until loss is under 1 %: { mbps, lossPct, rateMbps } or the last try. */
async function udpUnderOnePercent(lab, serverNs, clientNs, target, tcpMbps) {
  let last = null;
  for (const f of UDP_STEPS) {
    const rateMbps = Math.max(50, tcpMbps * f);
    const r = await iperf3Udp(lab, serverNs, clientNs, target, { rateMbps, durationSec: 5 });
    last = { mbps: r.bitsPerSecond / 1e6, lossPct: r.lossPct, rateMbps };
    if (r.lossPct < 1) return last;
  }
  return last;
}

// Underlay 192.0.2.0/24 on the veth; overlay 100.64.0.0/10 and fd00::/8.
const UNDERLAY_A = '192.0.2.1';
const UNDERLAY_B = '192.0.2.2';
const PORT = 51820;

async function main() {
  const lab = new Lab();
  const results = [];
  try {
    const a = await lab.addNamespace('bench-a');
    const b = await lab.addNamespace('bench-b');
    await lab.connect(a, b, { a: `${UNDERLAY_A}/24`, b: `${UNDERLAY_B}/24` });
    const [ka, kb] = await Promise.all([wgKeyPair(), wgKeyPair()]);
    const cfgA = {
      privateKey: ka.privateKey, listenPort: PORT, addresses: ['100.64.0.1/24', 'fd00:b::1/64'],
      peers: [{ publicKey: kb.publicKey, allowedIps: ['100.64.0.2/32', 'fd00:b::2/128'], endpoint: `${UNDERLAY_B}:${PORT}` }],
    };
    const cfgB = {
      privateKey: kb.privateKey, listenPort: PORT, addresses: ['100.64.0.2/24', 'fd00:b::2/64'],
      peers: [{ publicKey: ka.publicKey, allowedIps: ['100.64.0.1/32', 'fd00:b::1/128'], endpoint: `${UNDERLAY_A}:${PORT}` }],
    };

    const trixie = only.some((s) => s.endsWith('-trixie')) ? await fetchTrixieBinaries() : null;
    const wireguardGo = async (binary) => {
      const pa = await startWireguardGo(lab, a, cfgA, 'wg0', { binary });
      try {
        const pb = await startWireguardGo(lab, b, cfgB, 'wg0', { binary });
        return { target: '100.64.0.2', stop: async () => { await pa.stop(); await pb.stop(); } };
      } catch (e) { await pa.stop(); throw e; }
    };
    const nebula = async (opts) => {
      const net = await startNebula(lab, [
        { ns: a, name: 'bench-a', overlay: '100.64.1.1/10', underlay: UNDERLAY_A, dev: 'nebula1' },
        { ns: b, name: 'bench-b', overlay: '100.64.1.2/10', underlay: UNDERLAY_B, dev: 'nebula1' },
      ], opts);
      return { target: '100.64.1.2', stop: () => net.stop() };
    };
    // Each entry: start the system, return { target (overlay IP of b), stop }.
    const setups = {
      veth: async () => ({ target: UNDERLAY_B, stop: async () => {} }),
      'wireguard-go': () => wireguardGo(undefined),
      'wireguard-go-trixie': () => wireguardGo(trixie.wireguardGo),
      nebula: () => nebula({}),
      'nebula-trixie': () => nebula({ binary: trixie.nebula, certBinary: trixie.nebulaCert }),
      agentvpn: async () => {
        const pa = await startAgentVpn(lab, a, cfgA, 'agentvpn0');
        try {
          const pb = await startAgentVpn(lab, b, cfgB, 'agentvpn0');
          return { target: '100.64.0.2', stop: async () => { await pa.stop(); await pb.stop(); } };
        } catch (e) { await pa.stop(); throw e; }
      },
    };

    for (const system of SYSTEMS.filter((s) => only.includes(s))) {
      progress(`${system}: starting`);
      const row = { system, ok: false, mbps: null, retransmits: null, cpuSecPerGB: null, mbps4: null, udpMbps: null, udpLossPct: null, pingAvgMs: null, pingLossPct: null, error: null };
      let running;
      try {
        running = await setups[system]();
        await waitForPing(lab, a, running.target, 20_000);
        progress(`${system}: iperf3 ${duration} s to ${running.target}`);
        const cpuBefore = hostCpuSeconds();
        const ip = await iperf3(lab, b, a, running.target, { durationSec: duration });
        row.cpuSecPerGB = (hostCpuSeconds() - cpuBefore) / ((ip.bitsPerSecond * ip.seconds) / 8 / 1e9);
        row.mbps = ip.bitsPerSecond / 1e6;
        row.retransmits = ip.retransmits ?? null;
        progress(`${system}: iperf3 -P 4, ${duration} s`);
        row.mbps4 = (await iperf3(lab, b, a, running.target, { durationSec: duration, clientArgs: ['-P', '4'] })).bitsPerSecond / 1e6;
        progress(`${system}: iperf3 -u under 1 % loss`);
        const udp = await udpUnderOnePercent(lab, b, a, running.target, row.mbps);
        row.udpMbps = udp.mbps;
        row.udpLossPct = udp.lossPct;
        progress(`${system}: ping -c ${pingCount} -i 0.05`);
        const p = await ping(lab, a, running.target, { count: pingCount, intervalSec: 0.05 });
        row.pingAvgMs = Number.isFinite(p.avgMs) ? p.avgMs : null;
        row.pingLossPct = (100 * (p.sent - p.received)) / p.sent;
        row.ok = true;
        progress(`${system}: ${row.mbps.toFixed(0)} Mbit/s, ${row.pingAvgMs?.toFixed(3)} ms`);
      } catch (e) {
        row.error = e instanceof Error ? e.message : String(e);
        progress(`${system}: FAILED: ${row.error.split("\n")[0]}`);
      } finally {
        if (running) await running.stop().catch((e) => progress(`${system}: stop failed: ${e.message}`));
      }
      results.push(row);
    }
    if (only.includes('agentvpn')) results.push(await relayed(lab));
  } finally {
    await lab.cleanup();
    const left = (await listNamespaces()).filter((n) => n.startsWith(lab.prefix));
    if (left.length) progress(`warning: namespaces left behind: ${left.join(', ')}`);
  }
  return results;
}

/** agentvpn fleet mode with the direct path blocked at the router: all traffic through the registry's relay. */
async function relayed(lab) {
  const row = { system: 'agentvpn-relayed', ok: false, mbps: null, retransmits: null, cpuSecPerGB: null, mbps4: null, udpMbps: null, udpLossPct: null, pingAvgMs: null, pingLossPct: null, error: null };
  progress('agentvpn-relayed: starting a fleet, direct UDP between the agents dropped');
  try {
    const fleet = await startHubFleet(lab, ['relay-a', 'relay-b']);
    const [x, y] = [fleet.agents['relay-a'], fleet.agents['relay-b']];
    for (const [s, d] of [['192.0.2.0/28', '192.0.2.16/28'], ['192.0.2.16/28', '192.0.2.0/28']]) {
      await lab.exec(fleet.hub, ['iptables', '-I', 'FORWARD', '-s', s, '-d', d, '-j', 'DROP'], { check: true });
    }
    const target = (await y.json(['id'])).ipv4;
    await waitFor(async () => (await lab.exec(x.ns, ['ping', '-c', '1', '-W', '1', target])).code === 0, { timeoutMs: 20_000, what: 'the relayed path' });
    await waitFor(async () => (await x.json(['status'])).peers.every((p) => p.path?.kind !== 'direct'), { timeoutMs: 20_000, what: 'the path to be relayed' }).catch(() => {});
    const cpuBefore = hostCpuSeconds();
    const ip = await iperf3(lab, y.ns, x.ns, target, { durationSec: duration });
    row.cpuSecPerGB = (hostCpuSeconds() - cpuBefore) / ((ip.bitsPerSecond * ip.seconds) / 8 / 1e9);
    row.mbps = ip.bitsPerSecond / 1e6;
    row.retransmits = ip.retransmits ?? null;
    const p = await ping(lab, x.ns, target, { count: pingCount, intervalSec: 0.05 });
    row.pingAvgMs = Number.isFinite(p.avgMs) ? p.avgMs : null;
    row.pingLossPct = (100 * (p.sent - p.received)) / p.sent;
    row.ok = true;
    progress(`agentvpn-relayed: ${row.mbps.toFixed(0)} Mbit/s, ${row.pingAvgMs?.toFixed(3)} ms`);
  } catch (e) {
    row.error = e instanceof Error ? e.message : String(e);
    progress(`agentvpn-relayed: FAILED: ${row.error.split('\n')[0]}`);
  }
  return row;
}

function ratios(results) {
  const by = Object.fromEntries(results.filter((r) => r.ok).map((r) => [r.system, r]));
  const out = {};
  const av = by.agentvpn;
  for (const other of REFERENCES) {
    const o = by[other];
    if (!av || !o) continue;
    out[`agentvpn/${other}`] = {
      throughput: av.mbps / o.mbps,
      streams4: av.mbps4 != null && o.mbps4 != null ? av.mbps4 / o.mbps4 : null,
      udp: av.udpMbps != null && o.udpMbps != null ? av.udpMbps / o.udpMbps : null,
      cpuPerGB: av.cpuSecPerGB != null && o.cpuSecPerGB != null ? av.cpuSecPerGB / o.cpuSecPerGB : null,
      rtt: av.pingAvgMs != null && o.pingAvgMs != null ? av.pingAvgMs / o.pingAvgMs : null,
    };
  }
  return out;
}

const fmt = (v, digits) => (v == null ? '–' : v.toFixed(digits));

const started = new Date();
const [wgv, nebv] = await Promise.all([
  version(['wireguard-go', '--version'], /wireguard-go (v\S+)/),
  version(['nebula', '-version'], /Version: (\S+)/),
]);
const results = await main();
const rat = ratios(results);
const meta = {
  date: started.toISOString(), durationSec: duration, pingCount, cpus: cpus().length, kernel: release(),
  node: process.version, wireguardGo: wgv, nebula: nebv,
};

if (args.json) {
  console.log(JSON.stringify({ ...meta, results, ratios: rat }, null, 2));
} else {
  console.log(`\niperf3 ${duration} s: 1 TCP stream (host CPU s/GB while it ran), 4 streams, UDP at the highest rate tried under 1 % loss; ping -c ${pingCount} -i 0.05; ${meta.cpus} CPUs, kernel ${meta.kernel}, node ${meta.node}`);
  console.log(`wireguard-go ${wgv}, nebula ${nebv} (bookworm, PATH); *-trixie: Debian trixie's wireguard-go 0.0.20231211 and nebula 1.9.3 (scripts/fetch-trixie.sh)\n`);
  const rows = results.map((r) => [r.system, r.ok ? fmt(r.mbps, 0) : 'error', r.ok ? fmt(r.cpuSecPerGB, 2) : '', r.ok ? fmt(r.mbps4, 0) : '',
    r.ok ? (r.udpMbps == null ? '–' : `${fmt(r.udpMbps, 0)} (${fmt(r.udpLossPct, 1)}%)`) : '', r.ok ? fmt(r.pingAvgMs, 3) : '', r.ok ? fmt(r.retransmits, 0) : '', r.ok && r.pingLossPct ? `${fmt(r.pingLossPct, 0)}% loss` : '']);
  const head = ['system', 'Mbit/s', 'CPU s/GB', '4 streams', 'UDP Mbit/s (loss)', 'ping ms', 'retrans', ''];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  for (const r of results.filter((x) => !x.ok)) console.log(`\n${r.system} error: ${r.error}`);
  const keys = Object.keys(rat);
  if (keys.length) console.log('');
  for (const k of keys) {
    const q = rat[k];
    console.log(`${k}: throughput ${fmt(q.throughput, 2)}x, 4 streams ${fmt(q.streams4, 2)}x, UDP ${fmt(q.udp, 2)}x, CPU/GB ${fmt(q.cpuPerGB, 2)}x, ping RTT ${fmt(q.rtt, 2)}x`);
  }
}
process.exitCode = results.some((r) => !r.ok && r.system !== 'agentvpn') ? 1 : 0;
