/**
 * A registry and fleet-mode agents as lab processes: used by the NAT tests, the NAT benchmark
 * and `agentvpn demo`.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { AGENTVPN_BIN, REPO_ROOT } from './agentvpn.js';
import type { Lab, LabProcess } from './netns.js';
import { WaitAborted, waitFor, type CommandResult } from './proc.js';

export interface LabRegistry {
  ns: string;
  url: string;
  /** Its SQLite database (for `agentvpn registry agent|token|policy ... --db`). */
  db: string;
  token: string;
  network: string;
  proc: LabProcess;
}

/** Runs `agentvpn registry` (with its built-in relay and STUN) in ns and creates a join token. */
export async function startLabRegistry(lab: Lab, ns: string, ip: string, opts: { port?: number; network?: string; offlineAfterSec?: number; extraArgs?: string[] } = {}): Promise<LabRegistry> {
  const port = opts.port ?? 7443;
  const network = opts.network ?? 'lab';
  const db = join(lab.dir, `registry-${network}.db`);
  const url = `http://${ip}:${port}`;
  const proc = lab.spawn(ns, [process.execPath, AGENTVPN_BIN, 'registry', '--listen', `${ip}:${port}`, '--db', db, '--network', network,
    '--offline-after', String(opts.offlineAfterSec ?? 15), ...(opts.extraArgs ?? [])], { name: 'registry', cwd: REPO_ROOT });
  await waitFor(async () => (await lab.exec(ns, ['curl', '-sf', `${url}/healthz`])).code === 0, { timeoutMs: 20_000, what: `registry at ${url}` });
  const t = await lab.run(ns, [process.execPath, AGENTVPN_BIN, 'registry', 'token', 'create', '--db', db, '--network', network, '--json']);
  return { ns, url, db, network, token: JSON.parse(t.stdout).token as string, proc };
}

export class LabAgent {
  proc: LabProcess | null = null;
  constructor(
    private readonly lab: Lab,
    readonly name: string,
    readonly ns: string,
    readonly stateDir: string,
    readonly runDir: string,
  ) {}

  /** `agentvpn <args>` against this agent's daemon. */
  cli(args: string[], opts: { check?: boolean; timeoutMs?: number } = {}): Promise<CommandResult> {
    return this.lab.exec(this.ns, [process.execPath, AGENTVPN_BIN, ...args], {
      env: { ...process.env, AGENTVPN_RUN_DIR: this.runDir }, timeoutMs: opts.timeoutMs ?? 30_000, check: opts.check ?? true,
    });
  }

  async json<T = Record<string, unknown>>(args: string[]): Promise<T> {
    return JSON.parse((await this.cli([...args, '--json'])).stdout) as T;
  }
}

/** Starts `agentvpn up --registry ...` in ns and waits until its interface is up. */
export async function startLabAgent(
  lab: Lab, ns: string, name: string, registry: LabRegistry,
  opts: { caps?: string[]; port?: number; env?: NodeJS.ProcessEnv; agent?: LabAgent; extraArgs?: string[] } = {},
): Promise<LabAgent> {
  const agent = opts.agent ?? new LabAgent(lab, name, ns, join(lab.dir, `state-${name}`), join(lab.dir, `run-${name}`));
  mkdirSync(agent.runDir, { recursive: true });
  const caps = (opts.caps ?? []).flatMap((c) => ['--cap', c]);
  agent.proc = lab.spawn(ns, [process.execPath, AGENTVPN_BIN, 'up', '--foreground', '--registry', registry.url, '--token', registry.token,
    '--name', name, '--network', registry.network, '--state-dir', agent.stateDir, '--listen-port', String(opts.port ?? 51820), ...caps, ...(opts.extraArgs ?? [])],
  { name: `agent-${name}`, env: { ...process.env, ...opts.env, AGENTVPN_RUN_DIR: agent.runDir }, cwd: REPO_ROOT });
  const proc = agent.proc;
  await waitFor(async () => {
    if (proc.exitCode !== null) throw new WaitAborted(`agent ${name} exited:\n${lab.logTail(proc)}`);
    return lab.interfaceUp(ns, 'agentvpn0');
  }, { timeoutMs: 30_000, what: `agent ${name} up` });
  return agent;
}

/** Waits until every agent lists all the others as online. */
export async function waitForFleet(agents: LabAgent[], timeoutMs = 30_000): Promise<void> {
  for (const a of agents) {
    await waitFor(async () => {
      const { peers } = await a.json<{ peers: { online: boolean }[] }>(['peers']);
      return peers.filter((p) => p.online).length >= agents.length - 1;
    }, { timeoutMs, what: `${a.name} sees the whole fleet` });
  }
}

/** A fleet behind one router, no NAT: the registry at 203.0.113.10, each agent on its own /28 of 192.0.2.0/24. */
export interface HubFleet {
  hub: string;
  regNs: string;
  registry: LabRegistry;
  agents: Record<string, LabAgent>;
}

export const HUB_REGISTRY_IP = '203.0.113.10';

/** Starts a HubFleet of agents named `names` (at most 16) and waits until each sees the others. */
export async function startHubFleet(lab: Lab, names: readonly string[]): Promise<HubFleet> {
  const hub = await lab.addRouter('hub');
  const regNs = await lab.addNamespace('reg');
  await lab.connect(hub, regNs, { a: '203.0.113.1/24', b: `${HUB_REGISTRY_IP}/24`, ifB: 'eth0' });
  await lab.ip(regNs, ['route', 'add', 'default', 'via', '203.0.113.1']);
  const registry = await startLabRegistry(lab, regNs, HUB_REGISTRY_IP);
  const agents: Record<string, LabAgent> = {};
  for (const [i, name] of names.entries()) {
    const ns = await lab.addNamespace(name);
    await lab.connect(hub, ns, { a: `192.0.2.${16 * i + 1}/28`, b: `192.0.2.${16 * i + 2}/28`, ifB: 'eth0' });
    await lab.ip(ns, ['route', 'add', 'default', 'via', `192.0.2.${16 * i + 1}`]);
    agents[name] = await startLabAgent(lab, ns, name, registry);
  }
  await waitForFleet(Object.values(agents), 30_000);
  return { hub, regNs, registry, agents };
}
