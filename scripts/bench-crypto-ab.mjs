// Quick A/B of two agentvpn builds on the real packet path: two namespaces over a veth, an agentvpn
// daemon in each, iperf3 single TCP stream for --seconds, rounds alternating A B A B so a drift of
// the shared machine hits both. Prints each round and the median ratio A/B of throughput and of
// host CPU seconds per GB moved, and each daemon's CPU (in cores) while iperf3 ran. B is another checkout's bin/agentvpn.js (e.g. a copy of an older
// dist/ beside bin/, build/ and node_modules/). Run it under the bench lock:
//
//   flock /tmp/agentvpn-bench.lock node scripts/bench-crypto-ab.mjs --b /tmp/old/bin/agentvpn.js
//
// Options: --a BIN (default this checkout's), --b BIN (required), --seconds N (5), --rounds N (3).
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { AGENTVPN_BIN, Lab, iperf3, labUnavailableReasons, startAgentVpn, waitFor, wgKeyPair } from '../dist/lab/index.js';

const { values: args } = parseArgs({
  options: {
    a: { type: 'string', default: AGENTVPN_BIN },
    b: { type: 'string' },
    seconds: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
  },
});
if (!args.b) {
  console.error('bench-crypto-ab: --b BIN is required (the build to compare against)');
  process.exit(2);
}
const reasons = labUnavailableReasons(['ip', 'iperf3', 'ping']);
if (reasons.length) {
  console.error(`bench-crypto-ab: cannot run:\n  ${reasons.join('\n  ')}`);
  process.exit(1);
}
const SECONDS = Number(args.seconds);
const ROUNDS = Number(args.rounds);
const PORT = 51820;
const UNDERLAY_A = '192.0.2.1';
const UNDERLAY_B = '192.0.2.2';

/** Host CPU seconds (all processes and the kernel; idle and iowait excepted) from /proc/stat. */
function hostCpuSeconds() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (f.reduce((s, x) => s + x, 0) - f[3] - f[4]) / 100;
}

/** CPU seconds a process has used so far (utime + stime from /proc/PID/stat). */
function processCpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];

const lab = new Lab();
const results = { A: [], B: [] };
try {
  const a = await lab.addNamespace('cab-a');
  const b = await lab.addNamespace('cab-b');
  await lab.connect(a, b, { a: `${UNDERLAY_A}/24`, b: `${UNDERLAY_B}/24` });
  const [ka, kb] = await Promise.all([wgKeyPair(), wgKeyPair()]);
  const cfgA = {
    privateKey: ka.privateKey, listenPort: PORT, addresses: ['100.64.0.1/24'],
    peers: [{ publicKey: kb.publicKey, allowedIps: ['100.64.0.2/32'], endpoint: `${UNDERLAY_B}:${PORT}` }],
  };
  const cfgB = {
    privateKey: kb.privateKey, listenPort: PORT, addresses: ['100.64.0.2/24'],
    peers: [{ publicKey: ka.publicKey, allowedIps: ['100.64.0.1/32'], endpoint: `${UNDERLAY_A}:${PORT}` }],
  };
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, bin] of [['A', args.a], ['B', args.b]]) {
      const pa = await startAgentVpn(lab, a, cfgA, 'agentvpn0', { bin });
      const pb = await startAgentVpn(lab, b, cfgB, 'agentvpn0', { bin }).catch(async (e) => { await pa.stop(); throw e; });
      try {
        await waitFor(async () => (await lab.exec(a, ['ping', '-c', '1', '-W', '1', '100.64.0.2'])).code === 0, { timeoutMs: 20_000, what: 'tunnel up' });
        const cpuBefore = hostCpuSeconds();
        const senderBefore = processCpuSeconds(pa.pid);
        const receiverBefore = processCpuSeconds(pb.pid);
        const ip = await iperf3(lab, b, a, '100.64.0.2', { durationSec: SECONDS });
        const cpuPerGB = (hostCpuSeconds() - cpuBefore) / ((ip.bitsPerSecond * ip.seconds) / 8 / 1e9);
        // Each daemon's share of one core while iperf3 ran: near 1 means its JS thread is the wall.
        const senderCore = (processCpuSeconds(pa.pid) - senderBefore) / ip.seconds;
        const receiverCore = (processCpuSeconds(pb.pid) - receiverBefore) / ip.seconds;
        results[name].push({ mbps: ip.bitsPerSecond / 1e6, cpuPerGB, senderCore, receiverCore });
        console.log(`round ${round + 1} ${name}: ${(ip.bitsPerSecond / 1e6).toFixed(0)} Mbit/s, ${cpuPerGB.toFixed(2)} host CPU s/GB, ` +
          `sender daemon ${senderCore.toFixed(2)} cores, receiver daemon ${receiverCore.toFixed(2)} cores`);
      } finally {
        await pa.stop();
        await pb.stop();
      }
    }
  }
  const ratios = results.A.map((r, i) => r.mbps / results.B[i].mbps);
  const cpuRatios = results.A.map((r, i) => r.cpuPerGB / results.B[i].cpuPerGB);
  console.log(JSON.stringify({
    seconds: SECONDS, rounds: ROUNDS, a: args.a, b: args.b,
    medianMbps: { A: +median(results.A.map((r) => r.mbps)).toFixed(0), B: +median(results.B.map((r) => r.mbps)).toFixed(0) },
    medianRatioMbps: +median(ratios).toFixed(3), medianRatioCpuPerGB: +median(cpuRatios).toFixed(3),
  }));
} finally {
  await lab.cleanup();
}
