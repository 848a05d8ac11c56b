import { spawn } from 'node:child_process';
import { mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { CommandModule } from 'yargs';
import pino from 'pino';
import { loadConfig } from '../../config/wgquick.js';
import { Daemon } from '../../daemon/daemon.js';
import { FleetAgent } from '../../daemon/fleet.js';
import { DEFAULT_STATE_DIR, stateDir } from '../../identity/identity.js';
import { NAME_PATTERN } from '../../net/names.js';
import { logFilePath, pidFilePath, runDir, validateInterfaceName } from '../../daemon/paths.js';
import type { DeviceStatus } from '../../daemon/status-types.js';
import { AgentVpnError } from '../../errors.js';
import { compileStaticPolicy, watchStaticPolicy } from '../../policy/static.js';
import { TRUST_MODES, type TrustMode } from '../../trust/store.js';
import { parseDuration } from '../duration.js';
import { interfaceOption, printError, printResult, runCommand, toAgentVpnError, type GlobalArgs } from '../output.js';

/** How long `up` waits for the background daemon to report that the interface is up. */
const START_TIMEOUT_MS = 30_000;

interface UpArgs extends GlobalArgs {
  config?: string;
  registry?: string;
  token?: string;
  name?: string;
  cap: string[];
  network: string;
  'state-dir'?: string;
  'registry-ca'?: string;
  dns: boolean;
  firewall: boolean;
  mtu: number;
  interface: string;
  foreground: boolean;
  'listen-port'?: number;
  'log-level': string;
  policy?: string;
  trust: TrustMode;
  'rotate-every'?: string;
}

/** The daemon's two modes: a static wg-quick config, or a fleet found through a registry. */
function checkMode(args: UpArgs): void {
  if (!args.config === !args.registry) {
    throw new AgentVpnError('USAGE', 'give either --config FILE (static peers) or --registry URL (fleet mode)',
      'e.g. `sudo agentvpn up --config wg0.conf` or `sudo agentvpn up --registry https://reg:7443 --token T --name planner`');
  }
  if (args.registry && !args.name) {
    throw new AgentVpnError('USAGE', '--registry needs --name', 'name this agent, e.g. --name planner (lowercase letters, digits, -)');
  }
  if (args.policy && args.registry) {
    throw new AgentVpnError('USAGE', '--policy is for static mode (--config)', 'in fleet mode the policy comes from the registry: `agentvpn registry policy set FILE`');
  }
  if (args.name && !NAME_PATTERN.test(args.name)) {
    throw new AgentVpnError('BAD_NAME', `invalid agent name "${args.name}"`, 'use lowercase letters, digits and -, at most 63 characters');
  }
}

/** Starts the daemon in either mode; returns a stop function. */
async function startDaemon(args: UpArgs, iface: string, log: pino.Logger): Promise<{ stop(): Promise<void>; status(): DeviceStatus }> {
  if (args.registry) {
    const fleet = new FleetAgent({
      iface, registryUrl: args.registry, token: args.token ?? process.env.AGENTVPN_TOKEN, name: args.name!, capabilities: args.cap,
      network: args.network, stateDir: stateDir(args['state-dir']), listenPort: args['listen-port'] ?? 0, mtu: args.mtu,
      caFile: args['registry-ca'], dns: args.dns, firewall: args.firewall, trust: args.trust, log,
      rotateEveryMs: args['rotate-every'] ? parseDuration(args['rotate-every'], '--rotate-every') : undefined,
    });
    const daemon = await fleet.start();
    return { stop: () => fleet.stop(), status: () => daemon.status() };
  }
  const config = await loadConfig(args.config!);
  if (args['listen-port'] !== undefined) config.listenPort = args['listen-port'];
  const policy = args.policy ? watchStaticPolicy(args.policy, config, log) : null;
  const handlers = policy ? { policyGet: () => ({ text: policy.text() }) } : undefined;
  const daemon = new Daemon({ iface, config, log, firewall: args.firewall, filter: policy?.filter, handlers });
  await daemon.start();
  const stop = () => {
    policy?.stop();
    return daemon.stop();
  };
  return { stop, status: () => daemon.status() };
}

type ChildReport = { type: 'ready'; status: DeviceStatus } | { type: 'error'; error: ReturnType<AgentVpnError['toJSON']> };

function describeUp(s: DeviceStatus): string {
  return `${s.interface} is up: public key ${s.publicKey}, listening on UDP ${s.listenPort}, ${s.peers.length} peer(s)`;
}

/** Runs the daemon in this process until SIGTERM/SIGINT or `agentvpn down`. */
async function runForeground(args: UpArgs): Promise<void> {
  const iface = validateInterfaceName(args.interface);
  checkMode(args);
  const log = pino({ level: args['log-level'], base: { iface } }, pino.destination(2));
  const report = (msg: ChildReport) => process.send?.(msg);
  let daemon: Awaited<ReturnType<typeof startDaemon>>;
  try {
    daemon = await startDaemon(args, iface, log);
  } catch (e) {
    report({ type: 'error', error: toAgentVpnError(e).toJSON() });
    printError(e, args.json);
    process.exit(1); // a half-started daemon must not linger with sockets and timers
  }
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));
  writeFileSync(pidFilePath(iface), `${process.pid}\n`, { mode: 0o644 });
  const shutdown = (signal: string) => {
    log.info({ signal }, 'stopping');
    void daemon.stop().finally(() => {
      rmSync(pidFilePath(iface), { force: true });
      process.exit(0);
    });
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.once('SIGHUP', () => shutdown('SIGHUP')); // a closed terminal: still take the interface and firewall table down
  process.on('exit', () => rmSync(pidFilePath(iface), { force: true }));
  const status = daemon.status();
  if (process.send) {
    report({ type: 'ready', status });
    process.disconnect?.();
  } else {
    printResult(args.json, { ...status }, () => describeUp(status));
  }
}

/** Starts the daemon as a detached child and returns once it reports the interface up (or fails). */
async function runBackground(args: UpArgs): Promise<void> {
  const iface = validateInterfaceName(args.interface);
  checkMode(args);
  if (args.config) {
    const config = await loadConfig(args.config); // report config errors here, before anything starts
    if (args.policy) compileStaticPolicy(args.policy, config);
  }
  mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  const logFd = openSync(logFilePath(iface), 'a', 0o600);
  const bin = fileURLToPath(new URL('../../../bin/agentvpn.js', import.meta.url));
  // The child gets the same arguments; the token travels in the environment, not on a command line others can read.
  const childArgs = [bin, ...process.argv.slice(2).filter((a, i, all) => a !== '--token' && all[i - 1] !== '--token' && !a.startsWith('--token=')), '--foreground'];
  const env = { ...process.env, ...(args.token ? { AGENTVPN_TOKEN: args.token } : {}) };
  const child = spawn(process.execPath, childArgs, { detached: true, env, stdio: ['ignore', logFd, logFd, 'ipc'] });

  const report = await new Promise<ChildReport>((resolve, reject) => {
    const timer = setTimeout(() => reject(new AgentVpnError('START_TIMEOUT', `the daemon did not come up within ${START_TIMEOUT_MS / 1000} s`, `see its log: ${logFilePath(iface)}`)), START_TIMEOUT_MS);
    child.once('message', (m) => { clearTimeout(timer); resolve(m as ChildReport); });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new AgentVpnError('DAEMON_EXITED', `the daemon exited during start (code ${code})`, `see its log: ${logFilePath(iface)}`));
    });
  });
  child.removeAllListeners();
  if (child.connected) child.disconnect();
  child.unref();
  if (report.type === 'error') throw new AgentVpnError(report.error.code, report.error.message, report.error.hint);
  printResult(args.json, { ...report.status }, () => `${describeUp(report.status)}\nlog: ${logFilePath(iface)}`);
}

export const upCommand: CommandModule<GlobalArgs, UpArgs> = {
  command: 'up',
  describe: 'Start the daemon: create the interface and connect to static peers (--config) or to a fleet (--registry)',
  builder: (y) =>
    y
      .option('config', { alias: 'c', type: 'string', describe: 'wg-quick style config file ([Interface] and [Peer] sections)' })
      .option('registry', { type: 'string', describe: 'registry URL (fleet mode), e.g. https://reg.example:7443' })
      .option('token', { type: 'string', describe: 'network join token (first join only; or AGENTVPN_TOKEN)' })
      .option('name', { type: 'string', describe: 'this agent\'s name in the network (fleet mode)' })
      .option('cap', { type: 'string', array: true, default: [] as string[], describe: 'capability, repeatable: name[@version][;key=value]' })
      .option('network', { type: 'string', default: 'default', describe: 'network to join (fleet mode)' })
      .option('state-dir', { type: 'string', describe: `identity and state (default ${DEFAULT_STATE_DIR} or AGENTVPN_STATE_DIR)` })
      .option('registry-ca', { type: 'string', describe: 'CA certificate (PEM) to trust for the registry\'s TLS' })
      .option('dns', { type: 'boolean', default: true, describe: 'answer NAME.<network> on the overlay addresses (port 53)' })
      .option('rotate-every', { type: 'string', describe: 'fleet mode: rotate the identity key on a schedule (e.g. 24h, 7d); a chain holds 64 rotations' })
      .option('trust', {
        choices: TRUST_MODES, default: 'tofu' as TrustMode,
        describe: 'fleet mode: tofu pins each agent\'s key at first sight and refuses a changed one; approve gives a new agent no tunnel until `agentvpn trust approve NAME`; open believes the registry',
      })
      .option('firewall', {
        type: 'boolean', default: true,
        describe: 'nftables rules: the overlay addresses answer through the tunnel only. --no-firewall is unsafe on shared LANs: '
          + 'any host there can then reach services on the overlay addresses, and send as an overlay address, without WireGuard',
      })
      // 1380, not WireGuard's 1420: a relayed packet carries 33 more bytes (relay frame), and
      // 1380 + 32 (WireGuard) + 33 + 8 (UDP) + 40 (IPv6) = 1493 still fits a 1500-byte link unfragmented.
      .option('mtu', { type: 'number', default: 1380, describe: 'tunnel MTU (fleet mode; static mode reads MTU from the config)' })
      .option('policy', { type: 'string', describe: 'static mode: policy file (grants, and "agents" naming the config\'s keys); watched, applied live' })
      .option('interface', interfaceOption)
      .option('foreground', { alias: 'f', type: 'boolean', default: false, describe: 'Stay in the foreground (systemd, containers, tests)' })
      .option('listen-port', { type: 'number', describe: 'UDP port to listen on (overrides ListenPort)' })
      .option('log-level', { type: 'string', default: process.env.AGENTVPN_LOG_LEVEL ?? 'info', choices: ['debug', 'info', 'warn', 'error'] }),
  handler: runCommand<UpArgs>((args) => (args.foreground ? runForeground(args) : runBackground(args))),
};
