// Audit log benchmark: what durability costs the audit log (src/audit/log.ts, run from dist/).
//   npm run bench:audit -- [--seconds 3] [--entries 100000] [--dir DIR] [--json]
// For 1, 16 and 256 concurrent appenders (each awaits its append before the next, as a caller
// that must not go on before its entry is durable does): entries/s acknowledged after fdatasync,
// append->ack latency p50/p99, entries per fdatasync. Then bytes per entry on disk (entries and
// checkpoints), the time to open (recover) a log of --entries entries, and to verify it offline.
// The log's directory is --dir (default: the OS temp dir): its file system sets the sync cost.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const ROOT = join(import.meta.dirname, '..');
const { values: args } = parseArgs({ options: {
  seconds: { type: 'string', default: '3' },
  entries: { type: 'string', default: '100000' },
  dir: { type: 'string', default: tmpdir() },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
} });
if (args.help) {
  console.log('usage: npm run bench:audit -- [--seconds S per concurrency, default 3] [--entries N for open/verify, default 100000] [--dir DIR] [--json]');
  process.exit(0);
}
const SECONDS = Number(args.seconds);
const ENTRIES = Number(args.entries);
if (!(SECONDS > 0) || !Number.isSafeInteger(ENTRIES) || ENTRIES <= 0) {
  console.error('bench-audit: --seconds takes a positive number, --entries a positive integer');
  process.exit(2);
}
const progress = (msg) => process.stderr.write(`bench-audit: ${msg}\n`);

// The benchmark measures the compiled log: rebuild it when a source is newer (tsc emits even
// when another part of the tree has type errors, so its exit status is only a warning).
const stale = readdirSync(join(ROOT, 'src', 'audit')).filter((f) => f.endsWith('.ts')).some((f) => {
  const js = join(ROOT, 'dist', 'audit', f.replace(/\.ts$/, '.js'));
  return !existsSync(js) || statSync(js).mtimeMs < statSync(join(ROOT, 'src', 'audit', f)).mtimeMs;
});
if (stale) {
  progress('dist/audit is older than src/audit: building');
  try {
    execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', ROOT], { stdio: 'ignore' });
  } catch {
    progress('warning: tsc reported errors (dist/ was still written)');
  }
}
const { AuditLog } = await import('../dist/audit/log.js');
const { verifyLogDir } = await import('../dist/audit/verify.js');
const { agentIdOf } = await import('../dist/identity/agent-id.js');
const { publicKeyOfSeed, randomSeed, signingKeyOf } = await import('../dist/identity/ed25519.js');

const seed = randomSeed();
const owner = agentIdOf(publicKeyOfSeed(seed));
const origin = `agentvpn.audit/${owner}`;
const peer = agentIdOf(publicKeyOfSeed(randomSeed()));
const base = mkdtempSync(join(args.dir, 'avn-bench-audit-'));
let dirs = 0;
const openLog = (dir) => AuditLog.open({ dir, owner, origin, signer: { name: origin, key: signingKeyOf(seed) } });
/** A typical event: a first handshake with a peer (type, a peer's agent ID, its endpoint, path and RTT). */
const append = (log, i) => log.append('peer.handshake', peer, { endpoint: `198.51.100.${i % 250}:51820`, path: 'direct', rttUs: 1000 + (i % 5000) });

// Counts fdatasyncs (FileHandle's prototype is shared by every handle): entries per sync is the batching.
let syncs = 0;
const probe = await open(join(base, 'probe'), 'w');
const proto = Object.getPrototypeOf(probe);
await probe.close();
const realSync = proto.datasync;
proto.datasync = function datasync() {
  syncs++;
  return realSync.call(this);
};

const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
const fsType = (() => {
  try {
    return execFileSync('stat', ['-f', '-c', '%T', base], { encoding: 'utf8' }).trim();
  } catch {
    return '?';
  }
})();

async function appendRate(appenders) {
  const dir = join(base, `rate${dirs++}`);
  const log = await openLog(dir);
  const latencies = [];
  const syncsBefore = syncs;
  const deadline = performance.now() + SECONDS * 1000;
  let n = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: appenders }, async () => {
    while (performance.now() < deadline) {
      const t0 = performance.now();
      await append(log, n++);
      latencies.push(performance.now() - t0);
    }
  }));
  const elapsed = (performance.now() - started) / 1000;
  const entriesSyncs = syncs - syncsBefore;
  await log.close();
  const bytes = statSync(join(dir, 'entries.jsonl')).size;
  const cpBytes = statSync(join(dir, 'checkpoints.jsonl')).size;
  rmSync(dir, { recursive: true, force: true });
  latencies.sort((a, b) => a - b);
  return {
    appenders, entries: latencies.length, perSecond: latencies.length / elapsed,
    p50Ms: quantile(latencies, 0.5), p99Ms: quantile(latencies, 0.99), entriesPerSync: latencies.length / Math.max(1, entriesSyncs),
    entryBytes: bytes / latencies.length, checkpointBytes: cpBytes / latencies.length,
  };
}

const rates = [];
for (const appenders of [1, 16, 256]) {
  progress(`${appenders} appender(s) for ${SECONDS} s`);
  rates.push(await appendRate(appenders));
}

progress(`writing a log of ${ENTRIES} entries`);
const bigDir = join(base, 'big');
const big = await openLog(bigDir);
let written = 0;
await Promise.all(Array.from({ length: 256 }, async () => {
  while (written < ENTRIES) await append(big, written++);
}));
await big.close();
const onDisk = statSync(join(bigDir, 'entries.jsonl')).size + statSync(join(bigDir, 'checkpoints.jsonl')).size;

progress('opening it (recovery: read, parse, check and hash every entry)');
let t0 = performance.now();
const reopened = await openLog(bigDir);
const openMs = performance.now() - t0;
const size = reopened.size;
await reopened.close();

progress('verifying it offline');
t0 = performance.now();
const report = await verifyLogDir(bigDir, { owner, origin, keys: [publicKeyOfSeed(seed)] });
const verifyMs = performance.now() - t0;
if (!report.ok) throw new Error(`the benchmark's log does not verify: ${report.problems[0].message}`);
rmSync(base, { recursive: true, force: true });

const result = {
  machine: { cpus: cpus().length, node: process.version, fs: fsType, dir: args.dir },
  rates,
  log: { entries: size, bytesPerEntry: onDisk / size, openMs, verifyMs, openEntriesPerSecond: size / (openMs / 1000), verifyEntriesPerSecond: size / (verifyMs / 1000) },
};
if (args.json) {
  console.log(JSON.stringify(result, null, 2));
  process.exit(0);
}
const pad = (s, n) => String(s).padStart(n);
console.log(`audit log, durable appends (fdatasync per batch) on ${fsType} (${args.dir}), node ${process.version}, ${cpus().length} cores`);
console.log('');
console.log('| appenders | entries/s | p50 ack ms | p99 ack ms | entries/fdatasync | bytes/entry (entries + checkpoints) |');
console.log('| --------: | --------: | ---------: | ---------: | ----------------: | ----------------------------------: |');
for (const r of rates) {
  console.log(`| ${pad(r.appenders, 9)} | ${pad(Math.round(r.perSecond), 9)} | ${pad(r.p50Ms.toFixed(2), 10)} | ${pad(r.p99Ms.toFixed(2), 10)} | ${pad(r.entriesPerSync.toFixed(1), 17)} | ${pad(`${r.entryBytes.toFixed(0)} + ${r.checkpointBytes.toFixed(1)}`, 35)} |`);
}
console.log('');
console.log(`| log of ${size} entries | value |`);
console.log('| --- | ---: |');
console.log(`| bytes per entry on disk | ${(onDisk / size).toFixed(1)} |`);
console.log(`| open (recovery) | ${openMs.toFixed(0)} ms (${Math.round(size / (openMs / 1000))} entries/s) |`);
console.log(`| verify (offline) | ${verifyMs.toFixed(0)} ms (${Math.round(size / (verifyMs / 1000))} entries/s) |`);
