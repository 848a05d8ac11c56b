// The audit log's cost on the packet path (part of `npm run bench:audit`): two fleet agents on a
// direct path, iperf3 through the tunnel for 10 s, three ways in the same run:
//   quiet     nothing to log: how many entries the tunnel's packets wrote (the claim: none)
//   logging   16 callers append to the sender's log as fast as it acknowledges (a burst of events)
//   receiver  the same, on the receiving agent
// and prints throughput and entries per round. The packets themselves never touch the log; a
// burst of events costs the daemon's one JS thread what its appends cost, which this measures.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { REPO_ROOT, Lab, iperf3, labUnavailableReasons, startHubFleet, waitFor } from '../dist/lab/index.js';

const { values: args } = parseArgs({ options: { seconds: { type: 'string', default: '10' }, json: { type: 'boolean', default: false } } });
const SECONDS = Number(args.seconds);
const reasons = labUnavailableReasons(['ip', 'iperf3', 'curl']);
if (reasons.length) {
  console.error(`bench-audit-path: cannot run:\n  ${reasons.join('\n  ')}`);
  process.exit(1);
}
const progress = (msg) => process.stderr.write(`bench-audit-path: ${msg}\n`);
const WRITER = join(REPO_ROOT, 'test', 'e2e', 'fixtures', 'audit-writer.mjs');

const lab = new Lab();
const rows = [];
try {
  const { agents: fleet } = await startHubFleet(lab, ['alpha', 'beta']);
  const agents = [fleet.alpha, fleet.beta];
  const [alpha, beta] = agents;
  const betaIp = (await beta.json(['id'])).ipv4;
  await waitFor(async () => (await lab.exec(alpha.ns, ['ping', '-c', '1', '-W', '1', betaIp])).code === 0, { timeoutMs: 15_000, what: 'tunnel up' });
  const sizeOf = (a) => readFileSync(join(a.stateDir, 'audit', 'entries.jsonl'), 'utf8').split('\n').length - 1;

  for (const [label, loaded] of [['quiet', null], ['logging (sender)', alpha], ['logging (receiver)', beta], ['quiet again', null]]) {
    progress(label);
    const before = agents.map(sizeOf);
    const writer = loaded && lab.spawn(loaded.ns, [process.execPath, WRITER, REPO_ROOT, 'agentvpn0', '16', 'bench'], { name: 'audit-writer', env: { ...process.env, AGENTVPN_RUN_DIR: loaded.runDir } });
    const r = await iperf3(lab, beta.ns, alpha.ns, betaIp, { durationSec: SECONDS });
    if (writer) await lab.kill(writer);
    const added = agents.map((a, i) => sizeOf(a) - before[i]);
    rows.push({ label, mbits: Math.round(r.bitsPerSecond / 1e6), packets: Math.round(r.bitsPerSecond / 8 / 1400 * r.seconds), entriesAlpha: added[0], entriesBeta: added[1] });
  }
} finally {
  await lab.cleanup();
}

if (args.json) {
  console.log(JSON.stringify({ seconds: SECONDS, rows }));
} else {
  const base = rows[0].mbits;
  console.log(`\naudit cost on the packet path: iperf3 single TCP stream ${SECONDS} s through a direct fleet tunnel`);
  console.log(['round'.padEnd(20), 'Mbit/s'.padStart(8), 'vs quiet'.padStart(9), '~packets'.padStart(10), 'entries A'.padStart(10), 'entries B'.padStart(10)].join(' '));
  for (const r of rows) {
    console.log([r.label.padEnd(20), String(r.mbits).padStart(8), `${(r.mbits / base).toFixed(2)}x`.padStart(9), String(r.packets).padStart(10), String(r.entriesAlpha).padStart(10), String(r.entriesBeta).padStart(10)].join(' '));
  }
  console.log('entries in a quiet round are what the tunnel itself logged (its packets: none; a checkpoint is not an entry)');
}
