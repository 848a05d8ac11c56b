/**
 * `agentvpn registry` (from dist/, as the operator runs it) in a process of its own, so a test
 * can measure the registry's memory and file descriptors apart from the attacker's (the test's).
 * The test stops it by PID.
 */
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin/agentvpn.js');

export interface RegistryProcess {
  url: string;
  port: number;
  pid: number;
  /** Lines the registry wrote to stderr (its log), for checks such as "no stack overflow". */
  log: string[];
  /** Resident memory in MiB, from /proc. */
  rssMiB(): number;
  /** Open file descriptors, from /proc. */
  fds(): number;
  stop(): Promise<void>;
}

/** Starts the registry on 127.0.0.1 with `db`; `maxFds` runs it under that RLIMIT_NOFILE (prlimit). */
export async function startRegistryProcess(db: string, opts: { maxFds?: number; network?: string; args?: string[] } = {}): Promise<RegistryProcess> {
  const args = [BIN, 'registry', '--listen', '127.0.0.1:0', '--db', db, '--network', opts.network ?? 'default', '--log-level', 'warn', '--json', ...(opts.args ?? [])];
  const argv = opts.maxFds ? ['prlimit', `--nofile=${opts.maxFds}:${opts.maxFds}`, process.execPath, ...args] : [process.execPath, ...args];
  const child: ChildProcess = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
  const log: string[] = [];
  child.stderr!.setEncoding('utf8').on('data', (d: string) => log.push(...d.split('\n').filter(Boolean)));
  const started = await new Promise<{ url: string; port: number }>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (!out.includes('\n')) return;
      const answer = JSON.parse(out.split('\n')[0]);
      if (answer.ok === false) reject(new Error(`registry failed to start: ${answer.message}`));
      else resolve({ url: answer.url, port: answer.port });
    });
    child.once('exit', (code) => reject(new Error(`registry exited during start (code ${code}): ${log.join('\n')}`)));
  });
  const pid = child.pid!;
  return {
    ...started,
    pid,
    log,
    rssMiB: () => Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024,
    fds: () => readdirSync(`/proc/${pid}/fd`).length,
    stop: () => new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
      child.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      child.kill('SIGTERM');
    }),
  };
}

/** A join token made with the CLI on the registry's database (the registry may be running). */
export function createTokenCli(db: string, opts: { network?: string; uses?: number; tags?: string[] } = {}): string {
  const args = [BIN, 'registry', 'token', 'create', '--db', db, '--network', opts.network ?? 'default', '--json', ...(opts.uses ? ['--uses', String(opts.uses)] : []),
    ...(opts.tags ?? []).flatMap((t) => ['--tag', t])];
  return JSON.parse(execFileSync(process.execPath, args, { encoding: 'utf8', cwd: ROOT })).token;
}

/** `agentvpn registry ARGS... --json` (the built CLI, on the database a registry may be running on): exit code and its JSON answer. */
export function registryCli(args: string[]): { code: number; answer: Record<string, unknown> } {
  const r = spawnSync(process.execPath, [BIN, 'registry', ...args, '--json'], { encoding: 'utf8', cwd: ROOT });
  return { code: r.status ?? -1, answer: JSON.parse(r.stdout.split('\n')[0] || '{}') };
}

/** registryCli without blocking this process: for commands that talk to a registry running in the test's own process. */
export function registryCliAsync(args: string[], env: Record<string, string> = {}): Promise<{ code: number; answer: Record<string, unknown> }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, 'registry', ...args, '--json'], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.once('close', (code) => resolve({ code: code ?? -1, answer: JSON.parse(out.split('\n')[0] || '{}') }));
  });
}
