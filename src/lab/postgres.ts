/**
 * A throwaway PostgreSQL server for tests: initdb in a fresh temp dir, run as an unprivileged
 * user (the `postgres` account, else `nobody`: PostgreSQL refuses to run as root), listening on
 * a unix socket in that dir only (listen_addresses = ''), so it sends nothing on any network
 * and any namespace of the lab reaches it through the file system. Stopped by its PID; the dir
 * is removed on stop and at process exit, also when a test fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand, sleep, waitFor } from './proc.js';

export interface LabPostgres {
  /** postgres://... with the socket dir as host: what `agentvpn registry --db` takes. */
  url: string;
  /** The same database, with `database` in place of the default one. */
  urlOf(database: string): string;
  dir: string;
  pid: number;
  /** Runs SQL as the superuser (psql -c); returns stdout. */
  sql(text: string, database?: string): Promise<string>;
  stop(): Promise<void>;
}

/** The superuser initdb creates; trust authentication on the socket (only the socket's dir mode guards it: a test server). */
const SUPERUSER = 'agentvpn';
const DATABASE = 'registry';

/** Servers not stopped yet, killed at exit so that no test leaves one behind. */
const live = new Map<number, { child: ChildProcess; dir: string }>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const [pid, s] of live) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
      rmSync(s.dir, { recursive: true, force: true });
    }
  });
}

function binDir(): string {
  const base = '/usr/lib/postgresql';
  if (existsSync(base)) {
    const versions = readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a));
    if (versions.length > 0) return join(base, versions[0], 'bin');
  }
  return ''; // initdb and postgres on the PATH
}

/** The uid and gid of an unprivileged account to run the server as. */
function serverUser(): { name: string; uid: number; gid: number } {
  const passwd = readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':'));
  for (const name of ['postgres', 'nobody']) {
    const row = passwd.find((f) => f[0] === name);
    if (row) return { name, uid: Number(row[2]), gid: Number(row[3]) };
  }
  throw new Error('no unprivileged account (postgres or nobody) to run PostgreSQL as');
}

/** Whether this machine can start a test PostgreSQL (initdb present); the reason when not. */
export function postgresUnavailableReason(): string | null {
  const bin = binDir();
  if (bin === '' && !process.env.PATH?.split(':').some((p) => existsSync(join(p, 'initdb')))) {
    return 'PostgreSQL is not installed (apt-get install postgresql; scripts/install-deps.sh)';
  }
  return null;
}

/** Starts a PostgreSQL server with database `registry`; resolves once it accepts connections. */
export async function startPostgres(): Promise<LabPostgres> {
  installExitHook();
  const bin = binDir();
  const tool = (name: string) => (bin ? join(bin, name) : name);
  const user = serverUser();
  const dir = mkdtempSync(join(tmpdir(), 'agentvpn-pg-'));
  chownSync(dir, user.uid, user.gid);
  const data = join(dir, 'data');
  const asUser = { uid: user.uid, gid: user.gid, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, LANG: 'C', LC_ALL: 'C' } };
  const run = (argv: string[]) => new Promise<{ code: number | null; out: string }>((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { ...asUser, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
  try {
    const init = await run([tool('initdb'), '-D', data, '-U', SUPERUSER, '--auth=trust', '-E', 'UTF8', '--no-sync']);
    if (init.code !== 0) throw new Error(`initdb failed:\n${init.out.slice(-2000)}`);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  // Durability off: a test database. A few connections suffice for two registry instances and the tests.
  const child = spawn(tool('postgres'), ['-D', data, '-k', dir, '-c', "listen_addresses=", '-c', 'fsync=off', '-c', 'synchronous_commit=off',
    '-c', 'full_page_writes=off', '-c', 'max_connections=60', '-c', 'shared_buffers=32MB'],
  { ...asUser, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr!.on('data', (c: Buffer) => (log = (log + c.toString()).slice(-8000)));
  const pid = child.pid!;
  live.set(pid, { child, dir });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `postgres://${SUPERUSER}@localhost/${DATABASE}?host=${encodeURIComponent(dir)}`;
  const psql = (text: string, database = DATABASE) => runCommand(['psql', '-h', dir, '-U', SUPERUSER, '-d', database, '-v', 'ON_ERROR_STOP=1', '-At', '-c', text], { timeoutMs: 20_000 });
  const stop = async () => {
    if (!live.has(pid)) return;
    live.delete(pid);
    // SIGINT: "fast" shutdown (disconnects clients); SIGKILL if it hangs.
    child.kill('SIGINT');
    if (!(await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]))) {
      child.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`postgres exited (${child.exitCode}):\n${log}`);
      return (await psql('SELECT 1', 'postgres')).code === 0;
    }, { timeoutMs: 30_000, what: 'PostgreSQL accepting connections' });
    const created = await psql(`CREATE DATABASE ${DATABASE}`, 'postgres');
    if (created.code !== 0) throw new Error(`CREATE DATABASE failed: ${created.stderr}`);
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    url, dir, pid,
    urlOf: (database) => url.replace(`/${DATABASE}?`, `/${database}?`),
    sql: async (text, database = DATABASE) => {
      const r = await psql(text, database);
      if (r.code !== 0) throw new Error(`psql failed: ${r.stderr}`);
      return r.stdout;
    },
    stop,
  };
}
