/**
 * The network-namespace lab: namespaces joined by veth pairs, processes run inside them,
 * and a cleanup that always runs (explicitly, from afterAll, or on exit/SIGINT/SIGTERM).
 *
 * Rules it enforces (DESIGN.md, "Test lab rules"): every namespace carries a per-run prefix
 * `avl<pid>-<n>-`; only PIDs the lab started are signalled, by PID; namespaces are removed
 * even when a test throws. `Lab.sweepStale()` removes namespaces left by dead lab owners.
 */
import { spawn as spawnChild, execFileSync, type ChildProcess } from 'node:child_process';
import { closeSync, createWriteStream, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  LabCommandError,
  isPidAlive,
  runCommand,
  sleep,
  sleepSync,
  type CommandOptions,
  type CommandResult,
} from './proc.js';

export { waitFor, WaitAborted, sleep, isPidAlive, runCommand, LabCommandError } from './proc.js';
export type { WaitForOptions, CommandResult, CommandOptions } from './proc.js';

/** Every lab namespace starts with this; the digits after it are the creating process's PID. */
export const LAB_NS_PREFIX = 'avl';
const LAB_NS_PATTERN = /^avl(\d+)-\d+-/;
const IFNAMSIZ = 15;

export interface LabOptions {
  /** Grace period between SIGTERM and SIGKILL when stopping processes. Default 2000 ms. */
  graceMs?: number;
  /** Keep the lab's temp dir (logs, keys, configs) after cleanup. Also AGENTVPN_LAB_KEEP=1. */
  keepDir?: boolean;
}

export interface ExecOptions extends CommandOptions {
  /** Run argv[0] as a `sh -c` script (argv[1..] become $0, $1, …). Only when asked. */
  shell?: boolean;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Used in the log file name. Default: basename of argv[0]. */
  name?: string;
  /**
   * 'file' (default): stdout and stderr go straight to the log file.
   * 'pipe': child.stdout/child.stderr are readable streams; everything is also copied to the log.
   */
  stdio?: 'file' | 'pipe';
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

/** A process the lab started and tracks; it is stopped by `cleanup()` if still running. */
export interface LabProcess extends ChildProcess {
  readonly ns: string;
  readonly argv: readonly string[];
  /** stdout+stderr of the process (also in 'pipe' mode). */
  readonly logFile: string;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ExitInfo>;
}

export interface ConnectOptions {
  /** Address(es) for the end in nsA, CIDR, IPv4 and/or IPv6 (e.g. '192.0.2.1/24', 'fd00:1::1/64'). */
  a?: string | string[];
  /** Address(es) for the end in nsB. */
  b?: string | string[];
  /** Interface name in nsA (≤ 15 chars). Default `to-<short name of nsB>`. */
  ifA?: string;
  /** Interface name in nsB. Default `to-<short name of nsA>`. */
  ifB?: string;
  mtu?: number;
}

export interface Link {
  nsA: string;
  nsB: string;
  ifA: string;
  ifB: string;
}

let labCounter = 0;
const liveLabs = new Set<Lab>();
let handlersInstalled = false;
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function onExit(): void {
  for (const lab of [...liveLabs]) lab.cleanupSync();
}

function onSignal(sig: NodeJS.Signals): void {
  onExit();
  for (const s of SIGNALS) process.removeListener(s, onSignal);
  process.removeListener('exit', onExit);
  handlersInstalled = false;
  // Re-raise so the default action (or the host's own handler) applies as if we were not here.
  if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
}

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', onExit);
  for (const s of SIGNALS) process.on(s, onSignal);
}

function isIPv6(cidr: string): boolean {
  return cidr.includes(':');
}

function asList(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

function checkIfName(name: string): void {
  if (name.length === 0 || name.length > IFNAMSIZ || /[\s/:]/.test(name)) {
    throw new Error(`invalid interface name ${JSON.stringify(name)}: 1–${IFNAMSIZ} chars, no spaces, '/' or ':'`);
  }
}

/** Reasons the lab cannot run here (not root, no /dev/net/tun, missing tools); empty when it can. */
export function labUnavailableReasons(tools: string[] = ['ip']): string[] {
  const reasons: string[] = [];
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    reasons.push('the netns lab needs root (run the tests as root, e.g. sudo npm test)');
  }
  if (!existsSync('/dev/net/tun')) reasons.push('/dev/net/tun is missing (load the tun module / give the container the device)');
  const path = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin']);
  for (const t of tools) {
    if (!path.some((d) => d && existsSync(join(d, t)))) {
      reasons.push(`${t} is not installed (run scripts/install-deps.sh as root)`);
    }
  }
  return reasons;
}

export class Lab {
  /** `avl<pid>-<n>-`: prefix of every namespace this lab creates. */
  readonly prefix: string;
  /** Temp dir for logs, keys and configs of this lab. */
  readonly dir: string;
  private readonly graceMs: number;
  private readonly keepDir: boolean;
  private readonly namespaces: string[] = [];
  private readonly ifNames = new Map<string, Set<string>>();
  private readonly procs = new Set<LabProcess>();
  private logCounter = 0;
  private cleanupPromise: Promise<void> | undefined;
  private closed = false;

  constructor(opts: LabOptions = {}) {
    this.prefix = `${LAB_NS_PREFIX}${process.pid}-${labCounter++}-`;
    this.graceMs = opts.graceMs ?? 2000;
    this.keepDir = opts.keepDir ?? process.env.AGENTVPN_LAB_KEEP === '1';
    this.dir = mkdtempSync(join(tmpdir(), `agentvpn-lab-${this.prefix}`));
    liveLabs.add(this);
    installHandlers();
  }

  /** Namespaces created so far (full names). */
  get namespaceNames(): readonly string[] {
    return this.namespaces;
  }

  /** Processes started and not yet known to have exited. */
  get runningProcesses(): LabProcess[] {
    return [...this.procs].filter((p) => p.exitCode === null && p.signalCode === null);
  }

  /** Full namespace name for a short name ('a' → 'avl1234-0-a'). */
  nsName(short: string): string {
    return this.prefix + short;
  }

  private assertOpen(): void {
    if (this.closed) throw new Error(`lab ${this.prefix} has been cleaned up`);
  }

  private shortOf(ns: string): string {
    return ns.startsWith(this.prefix) ? ns.slice(this.prefix.length) : ns;
  }

  /** Creates namespace `<prefix><short>` with loopback up; returns its full name. */
  async addNamespace(short: string): Promise<string> {
    this.assertOpen();
    if (!/^[a-z0-9][a-z0-9_-]{0,30}$/i.test(short)) {
      throw new Error(`invalid namespace short name ${JSON.stringify(short)} (letters, digits, '-', '_'; ≤ 31 chars)`);
    }
    const ns = this.nsName(short);
    if (this.namespaces.includes(ns)) throw new Error(`namespace ${ns} already exists in this lab`);
    await runCommand(['ip', 'netns', 'add', ns], { check: true });
    this.namespaces.push(ns); // tracked as soon as it exists, so cleanup removes it on any later failure
    this.ifNames.set(ns, new Set(['lo']));
    await runCommand(['ip', '-n', ns, 'link', 'set', 'lo', 'up'], { check: true });
    return ns;
  }

  /** A namespace that forwards IPv4 and IPv6 between its interfaces (add NAT with `iptables`). */
  async addRouter(short: string): Promise<string> {
    const ns = await this.addNamespace(short);
    await this.enableForwarding(ns);
    return ns;
  }

  async enableForwarding(ns: string): Promise<void> {
    await this.run(ns, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    await this.exec(ns, ['sysctl', '-q', '-w', 'net.ipv6.conf.all.forwarding=1']); // absent when IPv6 is off
  }

  /** `iptables -w <args>` in ns (the -w waits for the xtables lock other namespaces may hold). */
  iptables(ns: string, args: string[]): Promise<CommandResult> {
    return this.run(ns, ['iptables', '-w', ...args]);
  }

  ip6tables(ns: string, args: string[]): Promise<CommandResult> {
    return this.run(ns, ['ip6tables', '-w', ...args]);
  }

  /** `ip -n ns <args>`, throwing on failure. */
  ip(ns: string, args: string[]): Promise<CommandResult> {
    return runCommand(['ip', '-n', ns, ...args], { check: true });
  }

  /** Adds a route in ns (`ip route replace`, so it is idempotent). */
  async addRoute(ns: string, dest: string, via?: string, dev?: string): Promise<void> {
    const args = [isIPv6(dest) || (via !== undefined && isIPv6(via)) ? '-6' : '-4', 'route', 'replace', dest];
    if (via) args.push('via', via);
    if (dev) args.push('dev', dev);
    await this.ip(ns, args);
  }

  /** Adds an address (CIDR) to an interface; IPv6 addresses skip duplicate address detection. */
  async addAddress(ns: string, dev: string, cidr: string): Promise<void> {
    await this.ip(ns, ['addr', 'add', cidr, 'dev', dev, ...(isIPv6(cidr) ? ['nodad'] : [])]);
  }

  private pickIfName(ns: string, wanted: string | undefined, fallbackBase: string): string {
    const used = this.ifNames.get(ns) ?? new Set<string>();
    if (wanted !== undefined) {
      checkIfName(wanted);
      if (used.has(wanted)) throw new Error(`interface ${wanted} already exists in ${ns}`);
      return wanted;
    }
    const base = fallbackBase.slice(0, IFNAMSIZ);
    if (!used.has(base)) return base;
    for (let i = 1; ; i++) {
      const suffix = String(i);
      const name = base.slice(0, IFNAMSIZ - suffix.length) + suffix;
      if (!used.has(name)) return name;
    }
  }

  /**
   * Joins two namespaces with a veth pair, addresses both ends and brings them up.
   * The pair is created directly inside the namespaces, so its names never touch the host.
   */
  async connect(nsA: string, nsB: string, opts: ConnectOptions = {}): Promise<Link> {
    this.assertOpen();
    for (const ns of [nsA, nsB]) {
      if (!this.namespaces.includes(ns)) throw new Error(`namespace ${ns} was not created by this lab`);
    }
    if (nsA === nsB) throw new Error('connect: both ends are the same namespace');
    const ifA = this.pickIfName(nsA, opts.ifA, `to-${this.shortOf(nsB)}`);
    const ifB = this.pickIfName(nsB, opts.ifB, `to-${this.shortOf(nsA)}`);
    await runCommand(['ip', '-n', nsA, 'link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB, 'netns', nsB], {
      check: true,
    });
    this.ifNames.get(nsA)!.add(ifA);
    this.ifNames.get(nsB)!.add(ifB);
    const ends: [string, string, string[]][] = [
      [nsA, ifA, asList(opts.a)],
      [nsB, ifB, asList(opts.b)],
    ];
    for (const [ns, dev, addrs] of ends) {
      if (addrs.some(isIPv6)) await this.exec(ns, ['sysctl', '-q', '-w', `net.ipv6.conf.${dev}.disable_ipv6=0`]);
      for (const cidr of addrs) await this.addAddress(ns, dev, cidr);
      if (opts.mtu) await this.ip(ns, ['link', 'set', dev, 'mtu', String(opts.mtu)]);
      await this.ip(ns, ['link', 'set', dev, 'up']);
    }
    return { nsA, nsB, ifA, ifB };
  }

  /** Records an interface name as taken in ns (for helpers that create tun devices). */
  claimInterface(ns: string, name: string): void {
    checkIfName(name);
    const used = this.ifNames.get(ns);
    if (!used) throw new Error(`namespace ${ns} was not created by this lab`);
    used.add(name);
  }

  /** True when `ip -n ns link show dev` exists and is administratively up. */
  async interfaceUp(ns: string, dev: string): Promise<boolean> {
    const r = await runCommand(['ip', '-n', ns, '-j', 'link', 'show', 'dev', dev]);
    if (r.code !== 0) return false;
    try {
      const links = JSON.parse(r.stdout) as { flags?: string[] }[];
      return links.some((l) => l.flags?.includes('UP') ?? false);
    } catch {
      return false;
    }
  }

  private nsArgv(ns: string, argv: readonly string[], shell: boolean | undefined): string[] {
    if (argv.length === 0) throw new Error('empty argv');
    const cmd = shell ? ['sh', '-c', ...argv] : [...argv];
    return ['ip', 'netns', 'exec', ns, ...cmd];
  }

  /** Runs a command in ns and returns its output; does not throw on non-zero exit unless check. */
  exec(ns: string, argv: readonly string[], opts: ExecOptions = {}): Promise<CommandResult> {
    this.assertOpen();
    return runCommand(this.nsArgv(ns, argv, opts.shell), opts);
  }

  /** Like exec, but throws a LabCommandError (with stderr) on non-zero exit. */
  run(ns: string, argv: readonly string[], opts: ExecOptions = {}): Promise<CommandResult> {
    return this.exec(ns, argv, { ...opts, check: true });
  }

  /**
   * Starts a long-running process in ns and tracks it. `ip netns exec` execs the command in
   * place, so child.pid is the PID of the command itself.
   */
  spawn(ns: string, argv: readonly string[], opts: SpawnOptions = {}): LabProcess {
    this.assertOpen();
    const full = this.nsArgv(ns, argv, false);
    const base = (opts.name ?? argv[0]!.split('/').pop() ?? 'proc').replace(/[^\w.-]/g, '_');
    const logFile = join(this.dir, `${this.shortOf(ns)}-${base}-${this.logCounter++}.log`);
    let child: ChildProcess;
    if ((opts.stdio ?? 'file') === 'file') {
      const fd = openSync(logFile, 'a', 0o600);
      try {
        child = spawnChild(full[0]!, full.slice(1), { env: opts.env, cwd: opts.cwd, stdio: ['ignore', fd, fd] });
      } finally {
        closeSync(fd);
      }
    } else {
      child = spawnChild(full[0]!, full.slice(1), { env: opts.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
      const log = createWriteStream(logFile, { flags: 'a', mode: 0o600 });
      child.stdout!.on('data', (c: Buffer) => log.write(c));
      child.stderr!.on('data', (c: Buffer) => log.write(c));
      child.on('close', () => log.end());
    }
    const exited = new Promise<ExitInfo>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', (error) => {
        if (child.pid === undefined) resolve({ code: null, signal: null, error });
      });
    });
    const proc = Object.assign(child, { ns, argv: [...argv], logFile, exited }) as LabProcess;
    this.procs.add(proc);
    void exited.then(() => this.procs.delete(proc));
    return proc;
  }

  /** Last lines of a process's log (for error messages). */
  logTail(proc: LabProcess, lines = 30): string {
    try {
      return readFileSync(proc.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /**
   * Stops a process: SIGTERM, then SIGKILL after the grace period. Accepts a LabProcess or a PID
   * this lab started (for PIDs it does not track it refuses, to never signal a stranger).
   */
  async kill(target: LabProcess | number, opts: { graceMs?: number } = {}): Promise<void> {
    const proc = typeof target === 'number' ? [...this.procs].find((p) => p.pid === target) : target;
    if (!proc) {
      if (typeof target === 'number' && !isPidAlive(target)) return;
      throw new Error(`kill: PID ${String(target)} was not started by this lab (or has already exited)`);
    }
    if (proc.pid === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
    const grace = opts.graceMs ?? this.graceMs;
    proc.kill('SIGTERM');
    const done = await Promise.race([proc.exited.then(() => true), sleep(grace).then(() => false)]);
    if (!done) {
      proc.kill('SIGKILL');
      await Promise.race([proc.exited, sleep(5000)]);
    }
  }

  /**
   * Stops every tracked process and any leftover process inside the lab's namespaces, deletes
   * every namespace, removes the temp dir. Idempotent; safe from afterAll and after errors.
   */
  cleanup(): Promise<void> {
    this.cleanupPromise ??= this.doCleanup();
    return this.cleanupPromise;
  }

  private async doCleanup(): Promise<void> {
    this.closed = true;
    const errors: unknown[] = [];
    await Promise.all(
      [...this.procs].map((p) => this.kill(p).catch((e: unknown) => void errors.push(e))),
    );
    for (const ns of [...this.namespaces].reverse()) {
      try {
        await killNamespacePids(ns, this.graceMs);
        const r = await runCommand(['ip', 'netns', 'del', ns]);
        if (r.code !== 0 && (await namespaceExists(ns))) throw new LabCommandError(['ip', 'netns', 'del', ns], r);
        this.namespaces.splice(this.namespaces.indexOf(ns), 1);
      } catch (e) {
        errors.push(e);
      }
    }
    this.finish();
    if (errors.length > 0) throw new AggregateError(errors, `lab ${this.prefix} cleanup failed: ${errors.map(String).join('; ')}`);
  }

  /** Synchronous cleanup for process 'exit' and signal handlers (no event loop there). */
  cleanupSync(): void {
    if (!liveLabs.has(this)) return;
    this.closed = true;
    const pids = new Set<number>();
    for (const p of this.procs) if (p.pid !== undefined && p.exitCode === null && p.signalCode === null) pids.add(p.pid);
    for (const ns of this.namespaces) for (const pid of namespacePidsSync(ns)) pids.add(pid);
    terminateSync([...pids], this.graceMs);
    for (const ns of this.namespaces) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // best effort at exit
      }
    }
    this.namespaces.length = 0;
    this.finish();
  }

  private finish(): void {
    this.procs.clear();
    liveLabs.delete(this);
    if (!this.keepDir) rmSync(this.dir, { recursive: true, force: true });
  }

  /**
   * Removes lab namespaces (any `avl<pid>-<n>-*`) whose creating process no longer exists,
   * after stopping processes left inside them. Returns the names removed.
   */
  static async sweepStale(opts: { graceMs?: number } = {}): Promise<string[]> {
    const removed: string[] = [];
    for (const ns of await listNamespaces()) {
      const m = LAB_NS_PATTERN.exec(ns);
      if (!m) continue;
      const owner = Number(m[1]);
      if (owner === process.pid || isPidAlive(owner)) continue;
      await killNamespacePids(ns, opts.graceMs ?? 1000);
      const r = await runCommand(['ip', 'netns', 'del', ns]);
      if (r.code === 0) removed.push(ns);
    }
    return removed;
  }
}

/** Names from `ip netns list` (first word of each line). */
export async function listNamespaces(): Promise<string[]> {
  const r = await runCommand(['ip', 'netns', 'list'], { check: true });
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.length > 0);
}

export async function namespaceExists(ns: string): Promise<boolean> {
  return (await listNamespaces()).includes(ns);
}

async function namespacePids(ns: string): Promise<number[]> {
  const r = await runCommand(['ip', 'netns', 'pids', ns]);
  if (r.code !== 0) return [];
  return r.stdout.split(/\s+/).filter(Boolean).map(Number).filter((n) => Number.isInteger(n) && n > 1);
}

function namespacePidsSync(ns: string): number[] {
  try {
    const out = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return out.split(/\s+/).filter(Boolean).map(Number).filter((n) => Number.isInteger(n) && n > 1);
  } catch {
    return [];
  }
}

/** Processes still inside one of the lab's namespaces were started by the lab (or its children). */
async function killNamespacePids(ns: string, graceMs: number): Promise<void> {
  const pids = (await namespacePids(ns)).filter((p) => p !== process.pid);
  if (pids.length === 0) return;
  for (const pid of pids) signal(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && pids.some(isPidAlive)) await sleep(50);
  for (const pid of pids) if (isPidAlive(pid)) signal(pid, 'SIGKILL');
  const hard = Date.now() + 2000;
  while (Date.now() < hard && pids.some(isPidAlive)) await sleep(50);
}

function terminateSync(pids: number[], graceMs: number): void {
  if (pids.length === 0) return;
  for (const pid of pids) signal(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && pids.some(isPidAlive)) sleepSync(20);
  for (const pid of pids) if (isPidAlive(pid)) signal(pid, 'SIGKILL');
  const hard = Date.now() + 1000;
  while (Date.now() < hard && pids.some(isPidAlive)) sleepSync(20);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}
