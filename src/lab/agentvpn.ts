/** Starts agentvpn's own daemon in a lab namespace from a wg-quick style config. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WaitAborted, runCommand, waitFor, type CommandResult } from './proc.js';
import type { Lab, LabProcess } from './netns.js';
import { renderWgQuickConfig, type WgInterfaceConfig } from './wg-config.js';

/** The repository root (this file is src/lab/agentvpn.ts or dist/lab/agentvpn.js). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const AGENTVPN_BIN = join(REPO_ROOT, 'bin', 'agentvpn.js');

export interface AgentVpnOptions {
  /** Time allowed for the interface to come up (default 20 s). */
  timeoutMs?: number;
  /** Extra CLI arguments after the standard ones. */
  extraArgs?: string[];
  /** Extra environment (on top of process.env). */
  env?: NodeJS.ProcessEnv;
  /**
   * AGENTVPN_RUN_DIR of the daemon (control socket, pid file). Default: a directory of its own
   * in the lab dir, so daemons in different namespaces may use the same interface name.
   */
  runDir?: string;
  /** Path of bin/agentvpn.js (default <repo>/bin/agentvpn.js). */
  bin?: string;
  /** Options for node itself, before the script (e.g. --cpu-prof, which NODE_OPTIONS may not carry). */
  nodeArgs?: string[];
}

export class AgentVpnProcess {
  constructor(
    private readonly lab: Lab,
    readonly ns: string,
    readonly ifname: string,
    readonly configFile: string,
    readonly runDir: string,
    readonly env: NodeJS.ProcessEnv,
    readonly bin: string,
    readonly process: LabProcess,
  ) {}

  get pid(): number {
    return this.process.pid!;
  }

  /** Last lines of the daemon's stdout/stderr. */
  log(lines = 50): string {
    return this.lab.logTail(this.process, lines);
  }

  /** Runs `agentvpn <args>` in the daemon's namespace with its run dir (e.g. ['status', '--json']). */
  cli(args: string[], opts: { check?: boolean; timeoutMs?: number } = {}): Promise<CommandResult> {
    return this.lab.exec(this.ns, [process.execPath, this.bin, ...args], { env: this.env, ...opts });
  }

  async stop(): Promise<void> {
    await this.lab.kill(this.process);
    await runCommand(['ip', '-n', this.ns, 'link', 'del', this.ifname]); // normally gone with the process
  }
}

/**
 * Runs `node bin/agentvpn.js up --foreground --config FILE --interface NAME` in ns and waits
 * until the interface is up. On failure the process is stopped and the error quotes its log.
 */
export async function startAgentVpn(
  lab: Lab,
  ns: string,
  cfg: WgInterfaceConfig,
  ifname = 'agentvpn0',
  opts: AgentVpnOptions = {},
): Promise<AgentVpnProcess> {
  lab.claimInterface(ns, ifname);
  const configFile = join(lab.dir, `${ns}-${ifname}.conf`);
  writeFileSync(configFile, renderWgQuickConfig(cfg), { mode: 0o600 });
  const runDir = opts.runDir ?? join(lab.dir, `run-${ns}-${ifname}`);
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const env = { ...process.env, ...opts.env, AGENTVPN_RUN_DIR: runDir };
  const bin = opts.bin ?? AGENTVPN_BIN;
  const argv = [process.execPath, ...(opts.nodeArgs ?? []), bin, 'up', '--foreground', '--config', configFile, '--interface', ifname, ...(opts.extraArgs ?? [])];
  const proc = lab.spawn(ns, argv, { name: `agentvpn-${ifname}`, env, cwd: REPO_ROOT });
  const handle = new AgentVpnProcess(lab, ns, ifname, configFile, runDir, env, bin, proc);
  let exit: string | undefined;
  void proc.exited.then((x) => (exit = x.error ? x.error.message : x.signal ? `signal ${x.signal}` : `code ${x.code}`));
  try {
    await waitFor(
      async () => {
        if (exit !== undefined) throw new WaitAborted(`agentvpn exited (${exit}) before ${ifname} came up in ${ns}`);
        return lab.interfaceUp(ns, ifname);
      },
      { timeoutMs: opts.timeoutMs ?? 20_000, intervalMs: 100, what: `agentvpn interface ${ifname} up in ${ns}` },
    );
  } catch (e) {
    await handle.stop().catch(() => {});
    const log = lab.logTail(proc, 20);
    throw new Error(`${(e as Error).message}\n${log ? `agentvpn output:\n${log}` : '(no output)'}`, { cause: e });
  }
  return handle;
}
