import { spawn } from 'node:child_process';
import { mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CommandModule } from 'yargs';
import type { Logger as PinoLogger } from 'pino';
import { loadUpSettings, readTokenFile, UP_DEFAULTS, type UpSettings } from '../../config/config-file.js';
import { loadConfig } from '../../config/wgquick.js';
import { startDaemonMetrics } from '../../metrics/daemon.js';
import { Daemon } from '../../daemon/daemon.js';
import { FleetAgent } from '../../daemon/fleet.js';
import { DEFAULT_STATE_DIR, stateDir } from '../../identity/identity.js';
import { NAME_PATTERN } from '../../net/names.js';
import { logFilePath, pidFilePath, runDir } from '../../daemon/paths.js';
import { validateInterfaceName } from '../../tun/interface-name.js';
import type { ControlHandler } from '../../daemon/control-server.js';
import { Reloader, type ReloadTarget } from '../../daemon/reload.js';
import { SystemdNotifier, takeNotifyEnv } from '../../daemon/sd-notify.js';
import type { DeviceStatus } from '../../daemon/status-types.js';
import { AgentVpnError } from '../../errors.js';
import { compileStaticPolicy, watchStaticPolicy } from '../../policy/static.js';
import { TRUST_MODES } from '../../trust/store.js';
import { createLogger, LOG_LEVELS } from '../../util/logger.js';
import { parseDuration } from '../duration.js';
import { interfaceOption, printError, printResult, runCommand, toAgentVpnError, type GlobalArgs } from '../output.js';

/** How long `up` waits for the background daemon to report that the interface is up. */
const START_TIMEOUT_MS = 30_000;

/** How often the one-line status systemd shows is looked at (sent only when it changed). */
const NOTIFY_STATUS_EVERY_MS = 5_000;

/**
 * The flags as yargs gives them: the settings have no yargs defaults, so an absent flag is
 * undefined and the environment or the config file can set it (src/config/config-file.ts).
 */
interface UpArgs extends GlobalArgs, Partial<UpSettings> {
  'config-file'?: string;
  foreground: boolean;
}

/** The daemon's two modes: a static wg-quick config, or a fleet found through a registry. */
function checkMode(args: UpSettings): void {
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

/** A started daemon, in either mode. */
interface Running {
  stop(): Promise<void>;
  status(): DeviceStatus;
  /** One line for systemd's STATUS=. */
  summary(): string;
  /** Fleet mode: the agent name of a peer's WireGuard key (base64), for the metrics' peer label. */
  peerName?(wgKey: string): string | undefined;
  /** What `reload` may change in place. */
  reloadTarget: ReloadTarget;
}

function peerCount(n: number): string {
  return `${n} peer${n === 1 ? '' : 's'}`;
}

/** Starts the daemon in either mode; `handlers` are more control methods (reload). */
async function startDaemon(args: UpSettings, iface: string, log: PinoLogger, handlers: Record<string, ControlHandler>): Promise<Running> {
  const setLogLevel = (next: UpSettings) => {
    log.level = next['log-level'];
  };
  if (args.registry) {
    const fleet = new FleetAgent({
      iface, registryUrl: args.registry, token: args.token, name: args.name!, capabilities: args.cap,
      network: args.network, stateDir: stateDir(args['state-dir']), listenPort: args['listen-port'] ?? 0, mtu: args.mtu,
      caFile: args['registry-ca'], dns: args.dns, firewall: args.firewall, trust: args.trust, log, handlers,
      rotateEveryMs: args['rotate-every'] ? parseDuration(args['rotate-every'], '--rotate-every') : undefined,
    });
    const daemon = await fleet.start();
    return {
      stop: () => fleet.stop(), status: () => daemon.status(), summary: () => fleet.summary(), peerName: (wgKey) => fleet.peerNameOf(wgKey),
      reloadTarget: {
        live: ['cap', 'log-level'],
        apply: async (next, changed) => {
          if (changed.includes('cap')) await fleet.setCapabilities(next.cap);
          setLogLevel(next);
        },
      },
    };
  }
  const config = await loadConfig(args.config!);
  if (args['listen-port'] !== undefined) config.listenPort = args['listen-port'];
  const policyFile = args.policy;
  const policy = policyFile ? watchStaticPolicy(policyFile, config, log) : null;
  const daemon = new Daemon({ iface, config, log, firewall: args.firewall, filter: policy?.filter,
    handlers: { ...handlers, ...(policy ? { policyGet: () => ({ text: policy.text() }) } : {}) } });
  await daemon.start();
  const stop = () => {
    policy?.stop();
    return daemon.stop();
  };
  return {
    stop, status: () => daemon.status(), summary: () => `up, ${peerCount(daemon.status().peers.length)}`,
    reloadTarget: {
      live: ['log-level'],
      apply: async (next) => setLogLevel(next),
      // The file is also watched; a reload applies it at once and says whether it parses.
      refresh: async () => {
        if (!policy || !policyFile) return [];
        try {
          policy.filter.setPolicy(compileStaticPolicy(policyFile, config));
          return [`policy ${policyFile} re-read and applied`];
        } catch (e) {
          return [`policy ${policyFile} does not parse (${(e as Error).message}); the policy in force stays`];
        }
      },
    },
  };
}

type ChildReport = { type: 'ready'; status: DeviceStatus } | { type: 'error'; error: ReturnType<AgentVpnError['toJSON']> };

function describeUp(s: DeviceStatus): string {
  return `${s.interface} is up: public key ${s.publicKey}, listening on UDP ${s.listenPort}, ${s.peers.length} peer(s)`;
}

/** The settings from flags, environment and --config-file (flags > environment > file > defaults). */
function settingsOf(args: UpArgs): UpSettings {
  if (args['config-file']) args['config-file'] = resolvePath(args['config-file']); // reloads read the same file
  const { settings } = loadUpSettings(args as unknown as Record<string, unknown>, process.env, args['config-file']);
  // Read at start only (the token serves the first join): a reload must not fail once the file is gone.
  if (settings['token-file'] !== undefined && settings.token === undefined) settings.token = readTokenFile(settings['token-file']);
  checkMode(settings);
  return settings;
}

/** Runs the daemon in this process until SIGTERM/SIGINT or `agentvpn down`. */
async function runForeground(args: UpArgs): Promise<void> {
  const notifyEnv = takeNotifyEnv(); // before anything is spawned: children must not talk to systemd
  const report = (msg: ChildReport) => process.send?.(msg);
  let settings: UpSettings;
  try {
    settings = settingsOf(args);
  } catch (e) {
    report({ type: 'error', error: toAgentVpnError(e).toJSON() });
    throw e;
  }
  const iface = validateInterfaceName(settings.interface);
  const log = createLogger(settings['log-level'], { iface });
  const notifier = notifyEnv ? new SystemdNotifier(notifyEnv, log) : null;
  let reloader: Reloader | null = null;
  const reload = async () => {
    if (!reloader) throw new AgentVpnError('NOT_READY', 'the daemon is still starting', 'reload once `agentvpn status` answers');
    notifier?.reloading();
    try {
      return await reloader.reload();
    } finally {
      notifier?.reloaded(daemon.summary());
    }
  };
  let daemon: Running;
  try {
    daemon = await startDaemon(settings, iface, log, { reload: () => reload() });
    if (settings.metrics) {
      const running = daemon;
      await startDaemonMetrics(running, settings.metrics, log).catch(async (e) => {
        await running.stop(); // not up without the metrics that were asked for
        throw e;
      });
    }
  } catch (e) {
    report({ type: 'error', error: toAgentVpnError(e).toJSON() });
    printError(e, args.json);
    process.exit(1); // a half-started daemon must not linger with sockets and timers
  }
  reloader = new Reloader(settings, { flags: args as unknown as Record<string, unknown>, env: { ...process.env }, configFile: args['config-file'] }, daemon.reloadTarget, log);
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));
  writeFileSync(pidFilePath(iface), `${process.pid}\n`, { mode: 0o644 });
  const statusTimer = notifier ? setInterval(() => notifier.status(daemon.summary()), NOTIFY_STATUS_EVERY_MS).unref() : null;
  const shutdown = (signal: string) => {
    log.info({ signal }, 'stopping');
    if (statusTimer) clearInterval(statusTimer);
    notifier?.stopping();
    void daemon.stop().finally(() => {
      rmSync(pidFilePath(iface), { force: true });
      process.exit(0);
    });
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  // SIGHUP reloads, as daemons do; only a daemon on a terminal takes it as "terminal closed" and stops.
  if (process.stdin.isTTY) process.once('SIGHUP', () => shutdown('SIGHUP'));
  else process.on('SIGHUP', () => void reload().catch(() => {})); // a refused reload is logged by the reloader
  process.on('exit', () => rmSync(pidFilePath(iface), { force: true }));
  const status = daemon.status();
  notifier?.ready(daemon.summary());
  if (process.send) {
    report({ type: 'ready', status });
    process.disconnect?.();
  } else {
    printResult(args.json, { ...status }, () => describeUp(status));
  }
}

/** A join token given as --token is in this process's command line, which every local user may read. */
function warnTokenOnCommandLine(): void {
  if (!process.argv.some((a) => a === '--token' || a.startsWith('--token='))) return;
  process.stderr.write('warning: --token on the command line can be read by every local user (ps, /proc) while this command runs; ' +
    'use --token-file FILE (mode 600) or AGENTVPN_TOKEN instead\n');
}

/** Starts the daemon as a detached child and returns once it reports the interface up (or fails). */
async function runBackground(args: UpArgs): Promise<void> {
  const settings = settingsOf(args); // report config errors here, before anything starts
  const iface = validateInterfaceName(settings.interface);
  if (settings.config) {
    const config = await loadConfig(settings.config);
    if (settings.policy) compileStaticPolicy(settings.policy, config);
  }
  mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  const logFd = openSync(logFilePath(iface), 'a', 0o600);
  const bin = fileURLToPath(new URL('../../../bin/agentvpn.js', import.meta.url));
  // The child gets the same arguments; the token travels in the environment, not on a command line others can read.
  const childArgs = [bin, ...process.argv.slice(2).filter((a, i, all) => a !== '--token' && all[i - 1] !== '--token' && !a.startsWith('--token=')), '--foreground'];
  const env: NodeJS.ProcessEnv = { ...process.env, ...(args.token ? { AGENTVPN_TOKEN: args.token } : {}) };
  // The detached child is not the unit's main process: systemd would refuse its notifications.
  delete env.NOTIFY_SOCKET;
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
      .option('config-file', { type: 'string', describe: 'JSON file of these options (keys = long option names, e.g. /etc/agentvpn/agentvpn0.json); precedence: options > AGENTVPN_* environment > file; re-read by `agentvpn reload` and SIGHUP' })
      .option('config', { alias: 'c', type: 'string', describe: 'wg-quick style config file ([Interface] and [Peer] sections)' })
      .option('registry', { type: 'string', describe: 'registry URL (fleet mode), e.g. https://reg.example:7443 (or AGENTVPN_REGISTRY); instances of one registry on a shared database: comma-separated, the agent fails over between them' })
      .option('token', { type: 'string', describe: 'network join token (first join only); other local users can read it in `ps`: prefer --token-file or AGENTVPN_TOKEN' })
      .option('token-file', { type: 'string', describe: 'file holding the join token, readable by its owner only (or AGENTVPN_TOKEN_FILE)' })
      .option('name', { type: 'string', describe: 'this agent\'s name in the network (fleet mode; or AGENTVPN_NAME)' })
      .option('cap', { type: 'string', array: true, describe: 'capability, repeatable: name[@version][;key=value]' })
      .option('network', { type: 'string', describe: `network to join (fleet mode; or AGENTVPN_NETWORK; default ${UP_DEFAULTS.network})` })
      .option('state-dir', { type: 'string', describe: `identity and state (default ${DEFAULT_STATE_DIR} or AGENTVPN_STATE_DIR)` })
      .option('registry-ca', { type: 'string', describe: 'CA certificate (PEM) to trust for the registry\'s TLS' })
      .option('dns', { type: 'boolean', describe: 'answer NAME.<network> on the overlay addresses (port 53; default on, --no-dns)' })
      .option('rotate-every', { type: 'string', describe: 'fleet mode: rotate the identity key on a schedule (e.g. 24h, 7d); a chain holds 64 rotations' })
      .option('trust', {
        choices: TRUST_MODES,
        describe: 'fleet mode (default tofu): tofu pins each agent\'s key at first sight and refuses a changed one; approve gives a new agent no tunnel until `agentvpn trust approve NAME`; open believes the registry',
      })
      .option('firewall', {
        type: 'boolean',
        describe: '(default on) nftables rules: the overlay addresses answer through the tunnel only. --no-firewall is unsafe on shared LANs: '
          + 'any host there can then reach services on the overlay addresses, and send as an overlay address, without WireGuard',
      })
      .option('mtu', { type: 'number', describe: `tunnel MTU (fleet mode, default ${UP_DEFAULTS.mtu}; static mode reads MTU from the config)` })
      .option('policy', { type: 'string', describe: 'static mode: policy file (grants, and "agents" naming the config\'s keys); watched, applied live' })
      .option('interface', { ...interfaceOption, default: undefined, describe: `interface name (default ${UP_DEFAULTS.interface})` })
      .option('foreground', { alias: 'f', type: 'boolean', default: false, describe: 'Stay in the foreground (systemd, containers, tests)' })
      .option('metrics', { type: 'string', describe: 'serve Prometheus metrics at http://HOST:PORT/metrics (a PORT alone: 127.0.0.1; default off; they show peers, paths and traffic)' })
      .option('listen-port', { type: 'number', describe: 'UDP port to listen on (overrides ListenPort)' })
      .option('log-level', { type: 'string', choices: LOG_LEVELS, describe: `(or AGENTVPN_LOG_LEVEL; default ${UP_DEFAULTS['log-level']}) applied live by \`agentvpn reload\`` }),
  handler: runCommand<UpArgs>((args) => {
    warnTokenOnCommandLine();
    return args.foreground ? runForeground(args) : runBackground(args);
  }),
};
