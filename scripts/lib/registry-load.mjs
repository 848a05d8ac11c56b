// What the registry benchmark (bench-registry.mjs) and the 50k simulation (sim-registry.mjs)
// share: registries in child processes on SQLite or as two instances on a throwaway PostgreSQL
// (src/lab/postgres.ts, unix socket only), signed records of lightweight in-process agents, event
// streams, and the registry's CPU and memory read from /proc. Everything is on loopback.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The tree whose dist/ and bin/ run: this one, or AGENTVPN_ROOT (another build, for an A/B run). */
const root = process.env.AGENTVPN_ROOT ?? fileURLToPath(new URL('../..', import.meta.url));
const dist = (path) => import(pathToFileURL(join(root, 'dist', path)).href);
if (!existsSync(join(root, 'dist/registry/client.js'))) {
  console.error('error: dist/ is missing\nhint: run `npm run build` first');
  process.exit(1);
}
export const { Identity } = await dist('identity/identity.js');
export const { RegistryClient } = await dist('registry/client.js');
const { signRecord, RECORD_LIFETIME_MS } = await dist('registry/record.js');
const { startPostgres, postgresUnavailableReason } = await dist('lab/postgres.js');
export { postgresUnavailableReason };

export const NETWORK = 'bench';
const bin = join(root, 'bin/agentvpn.js');
/** Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ: 100 on Linux). */
const CLOCK_TICKS = 100;

const percentile = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN);
export const stats = (samples) => {
  const s = [...samples].sort((a, b) => a - b);
  return { n: s.length, mean: s.reduce((a, b) => a + b, 0) / s.length, p50: percentile(s, 0.5), p99: percentile(s, 0.99), max: s.at(-1) ?? NaN };
};

/** The machine's CPU counters (/proc/stat, all cores): busy and total ticks, and steal. */
export function machineTicks() {
  const [user, nice, system, idle, iowait, irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1).map(Number);
  return { busy: user + nice + system + irq + softirq, total: user + nice + system + idle + iowait + irq + softirq + steal, steal };
}

export function memoryOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMiB: kb('VmRSS') / 1024, peakMiB: kb('VmHWM') / 1024 };
}

/** Resets a process's peak RSS (VmHWM) to its current RSS, so a phase's own peak can be read. */
export function resetPeak(pid) {
  try {
    execFileSync('sh', ['-c', `echo 5 > /proc/${pid}/clear_refs`]);
  } catch {
    // not permitted: the peak then covers the whole run
  }
}

/** CPU seconds (user + system) used so far by `pids`. */
export function cpuOf(pids) {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
    } catch {
      // gone
    }
  }
  return ticks / CLOCK_TICKS;
}

/** `pid` and its children (PostgreSQL's backends). */
function treeOf(pid) {
  const kids = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1].split(' ')[1] === String(pid)) kids.push(Number(d));
    } catch {
      // gone
    }
  }
  return [pid, ...kids];
}

export async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** Runs `task(i)` for i in [0, n) on `workers` concurrent loops. */
export async function pool(n, workers, task) {
  let next = 0;
  await Promise.all(Array.from({ length: workers }, async () => {
    while (next < n) await task(next++);
  }));
}

export const loadAverage = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

/** `agentvpn registry` with `args` in a child process, on `listen` (any free port by default): its child and URL. */
export function startRegistry(args, listen = '127.0.0.1:0') {
  const child = spawn(process.execPath, [...(process.env.REGISTRY_NODE_ARGS ?? '').split(' ').filter(Boolean), bin, 'registry', '--listen', listen,
    '--network', NETWORK, '--log-level', 'warn', '--json', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  process.on('exit', () => child.exitCode === null && child.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      if (!out.includes('\n')) return;
      const answer = JSON.parse(out.split('\n')[0]);
      if (!answer.ok) return reject(new Error(`registry failed to start: ${answer.message}`));
      // Its later log lines (warnings) are echoed, not left to fill the pipe and stall the registry.
      child.stdout.removeAllListeners('data');
      child.stdout.on('data', (d) => process.stderr.write(`[registry ${child.pid}] ${d}`));
      resolve({ child, url: answer.url });
    });
    child.once('exit', (code) => reject(new Error(`registry exited during start (code ${code})`)));
  });
}

export const stopChild = (child) => new Promise((resolve) => {
  if (child.exitCode !== null) return resolve();
  child.once('exit', resolve);
  child.kill('SIGTERM');
});

export const tokenFor = (db, uses) => JSON.parse(execFileSync(process.execPath, [bin, 'registry', 'token', 'create', '--db', db, '--network', NETWORK,
  '--uses', String(uses), '--json'], { encoding: 'utf8' })).token;

/**
 * Registries on `store` ('sqlite': one instance; 'postgres': two on one database) with a join
 * token for `uses` agents. `dbPids()`: the database server's processes (none for SQLite);
 * `dbSize()`: MiB on disk; `rows()`: row counts of the main tables.
 */
/** Bytes a process has written (all write calls, sockets included), from /proc/PID/io. */
export function writtenBytes(pid) {
  return Number(/^wchar: (\d+)/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? NaN);
}

export { startPostgres };

export async function startStore(store, uses) {
  const dir = mkdtempSync(join(tmpdir(), 'agentvpn-registry-load-'));
  const children = [];
  if (store === 'sqlite') {
    const db = join(dir, 'registry.db');
    const token = tokenFor(db, uses);
    const { child, url } = await startRegistry(['--db', db]);
    children.push(child);
    return {
      label: 'SQLite, 1 instance', urls: [url], pids: [child.pid], dbPids: () => [], token,
      dbSize: async () => ['', '-wal'].reduce((a, s) => a + (existsSync(db + s) ? statSync(db + s).size : 0), 0) / 2 ** 20,
      rows: async () => {
        const q = (t) => Number(execFileSync('sqlite3', [db, `SELECT COUNT(*) FROM ${t}`], { encoding: 'utf8' }).trim());
        try {
          return { members: q('members'), records: q('records'), replay_windows: q('replay_windows') };
        } catch {
          return null; // no sqlite3 CLI
        }
      },
      stop: async () => {
        for (const c of children) await stopChild(c);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  const pg = await startPostgres();
  try {
    const token = tokenFor(pg.url, uses);
    const urls = [];
    for (const k of [1, 2]) {
      const { child, url } = await startRegistry(['--db', pg.url, '--witness-key', join(dir, 'witness.key'), '--audit-dir', join(dir, `audit-${k}`)]);
      children.push(child);
      urls.push(url);
    }
    return {
      label: 'PostgreSQL, 2 instances', urls, pids: children.map((c) => c.pid), dbPids: () => treeOf(pg.pid), token,
      dbSize: async () => Number(await pg.sql("SELECT pg_database_size('registry')")) / 2 ** 20,
      rows: async () => {
        const q = async (t) => Number(await pg.sql(`SELECT COUNT(*) FROM ${t}`));
        return { members: await q('members'), records: await q('records'), replay_windows: await q('replay_windows') };
      },
      stop: async () => {
        for (const c of children) await stopChild(c);
        await pg.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    for (const c of children) await stopChild(c);
    await pg.stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Agent i's signed record: two capabilities (svc.s<i%100>, llm.inference…model=m<i%10>), one endpoint. */
export function recordOf(identity, joined, i, seq) {
  const now = Date.now();
  return signRecord(identity, {
    v: 1, network: NETWORK, id: identity.id, name: `agent-${i}`, wgPublicKey: Buffer.from(identity.wgPublicKey).toString('base64'),
    ipv4: joined.ipv4, ipv6: joined.ipv6, endpoints: [`192.0.2.${1 + (i % 250)}:51820`],
    capabilities: [`svc.s${i % 100}`, `llm.inference@1;model=m${i % 10}`], seq, issuedAt: now, expiresAt: now + RECORD_LIFETIME_MS,
  });
}

/** Opens an event stream on `url` as `identity`; resolves when its snapshot arrived, with its size and close(). */
export function openStream(url, identity, onChange = () => {}) {
  const client = new RegistryClient({ url, identity, network: NETWORK });
  return new Promise((resolve, reject) => {
    let size = -1;
    const w = client.watch({
      snapshot: (agents) => {
        size = agents.length;
        resolve({ size, close: () => { w.close(); client.close(); } });
      },
      change: onChange,
      disconnected: (e) => {
        if (size >= 0) return;
        w.close();
        client.close();
        reject(e);
      },
    });
  });
}
