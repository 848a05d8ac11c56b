// Where the daemon's time goes (docs/performance.md): two static agentvpn daemons between two
// namespaces, iperf3 one TCP stream for --seconds, both under `node --cpu-prof`; prints each
// side's busiest functions by self time, and where the .cpuprofile files are (open them in
// Chrome DevTools or speedscope for the whole picture). Offloads follow AGENTVPN_NO_*_OFFLOAD.
// usage: node scripts/profile-daemon.mjs [--seconds 10] [--top 15] [--out DIR] [--bin path/to/bin/agentvpn.js (another build)]
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Lab, iperf3, startAgentVpn, waitForPing, wgKeyPair } from '../dist/lab/index.js';

const { values: args } = parseArgs({ options: { seconds: { type: 'string', default: '10' }, top: { type: 'string', default: '15' }, out: { type: 'string' }, bin: { type: 'string' } } });
const lab = new Lab();
const outDir = args.out ?? join(lab.dir, 'profiles');
let mbps = 0;
try {
  const a = await lab.addNamespace('prof-a');
  const b = await lab.addNamespace('prof-b');
  await lab.connect(a, b, { a: '192.0.2.1/24', b: '192.0.2.2/24' });
  const [ka, kb] = await Promise.all([wgKeyPair(), wgKeyPair()]);
  const cfg = (self, peer, me, them) => ({
    privateKey: self.privateKey, listenPort: 51820, addresses: [`100.64.0.${me}/24`],
    peers: [{ publicKey: peer.publicKey, allowedIps: [`100.64.0.${them}/32`], endpoint: `192.0.2.${them}:51820` }],
  });
  const prof = (side) => {
    const dir = join(outDir, side);
    mkdirSync(dir, { recursive: true });
    return { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${dir}`], ...(args.bin ? { bin: args.bin } : {}) };
  };
  const pa = await startAgentVpn(lab, a, cfg(ka, kb, 1, 2), 'agentvpn0', prof('sender'));
  const pb = await startAgentVpn(lab, b, cfg(kb, ka, 2, 1), 'agentvpn0', prof('receiver'));
  await waitForPing(lab, a, '100.64.0.2', 20_000);
  mbps = (await iperf3(lab, b, a, '100.64.0.2', { durationSec: Number(args.seconds) })).bitsPerSecond / 1e6;
  await pa.stop();
  await pb.stop();
} finally {
  await lab.cleanup();
}

/** Self time per function (name, file:line) from a V8 .cpuprofile, as percentages of all samples. */
function selfTimes(file) {
  const p = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const counts = new Map();
  for (const id of p.samples) counts.set(id, (counts.get(id) ?? 0) + 1);
  const total = p.samples.length;
  const agg = new Map();
  for (const [id, c] of counts) {
    const f = byId.get(id).callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url.split('/').slice(-2).join('/')}:${f.lineNumber + 1}`;
    agg.set(key, (agg.get(key) ?? 0) + c);
  }
  return [...agg].sort((x, y) => y[1] - x[1]).map(([k, c]) => [k, (100 * c) / total]);
}

console.log(`\niperf3 one TCP stream ${args.seconds} s: ${mbps.toFixed(0)} Mbit/s; profiles in ${outDir}`);
for (const side of ['sender', 'receiver']) {
  const dir = join(outDir, side);
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) {
    console.log(`${side}: no profile written`);
    continue;
  }
  console.log(`\n${side} (self time, % of samples)`);
  for (const [name, pct] of selfTimes(join(dir, file)).slice(0, Number(args.top))) console.log(`  ${pct.toFixed(1).padStart(5)}%  ${name}`);
}
