/**
 * Process helpers for the network-namespace lab: run a command and collect its output,
 * tell whether a PID is alive, wait for a condition. No shell is involved anywhere here.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface CommandResult {
  stdout: string;
  stderr: string;
  /** Exit code, or null when the process was ended by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface CommandOptions {
  /** Written to the command's stdin, which is then closed. */
  input?: string;
  /** Kill the command (SIGKILL) after this long. Default 60 s. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Throw a LabCommandError when the command exits non-zero. Default false. */
  check?: boolean;
}

/** A command the lab ran failed; the message carries the argv, exit status and stderr. */
export class LabCommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly result: CommandResult,
  ) {
    const status = result.signal ? `signal ${result.signal}` : `exit code ${result.code}`;
    const err = (result.stderr.trim() || result.stdout.trim()).slice(-2000);
    super(`command failed (${status}): ${argv.join(' ')}${err ? `\n${err}` : ''}`);
    this.name = 'LabCommandError';
  }
}

const MAX_OUTPUT = 64 * 1024 * 1024;

/** Runs argv[0] with the remaining arguments (execve, no shell) and collects its output. */
export function runCommand(argv: readonly string[], opts: CommandOptions = {}): Promise<CommandResult> {
  const [file, ...args] = argv;
  if (!file) return Promise.reject(new Error('runCommand: empty argv'));
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      env: opts.env,
      cwd: opts.cwd,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let size = 0;
    const collect = (into: Buffer[]) => (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_OUTPUT) into.push(chunk);
    };
    child.stdout!.on('data', collect(out));
    child.stderr!.on('data', collect(err));
    const timeoutMs = opts.timeoutMs ?? 60_000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${file}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const result: CommandResult = {
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (timedOut ? `\n(killed after ${timeoutMs} ms timeout)` : ''),
        code,
        signal,
      };
      if (opts.check && (code !== 0 || timedOut)) reject(new LabCommandError(argv, result));
      else resolve(result);
    });
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => {}); // the command may exit without reading its input
      child.stdin!.end(opts.input);
    }
  });
}

/** True when the PID exists and is not a zombie (an exited child not yet reaped still "exists"). */
export function isPidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 3 (state) follows the command name, which is in parentheses and may hold spaces.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Blocks the thread; only for the synchronous exit-time cleanup path. */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export interface WaitForOptions {
  /** Give up after this long. Default 10 s. */
  timeoutMs?: number;
  /** Time between attempts. Default 100 ms. */
  intervalMs?: number;
  /** What is being waited for, for the timeout message ("interface wg0 up in ns x"). */
  what?: string;
}

/** Thrown by a waitFor callback to stop waiting at once (e.g. the process it waits on died). */
export class WaitAborted extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WaitAborted';
  }
}

/**
 * Calls fn until it returns a truthy value (which is returned), or throws after timeoutMs.
 * Errors thrown by fn count as "not yet" (the last one is quoted in the timeout error), except
 * WaitAborted, which is rethrown immediately.
 */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  opts: WaitForOptions = {},
): Promise<NonNullable<T>> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  let attempts = 0;
  for (;;) {
    attempts++;
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
      lastError = undefined;
    } catch (e) {
      if (e instanceof WaitAborted) throw e;
      lastError = e;
    }
    if (Date.now() >= deadline) break;
    await sleep(Math.min(intervalMs, Math.max(0, deadline - Date.now())));
  }
  const last = lastError instanceof Error ? `; last error: ${lastError.message}` : lastError ? `; last error: ${String(lastError)}` : '';
  throw new Error(`timed out after ${timeoutMs} ms (${attempts} attempts) waiting for ${opts.what ?? 'condition'}${last}`, {
    cause: lastError,
  });
}
