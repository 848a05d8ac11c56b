import { spawn } from 'node:child_process';
import { mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { CommandModule } from 'yargs';
import pino from 'pino';
import { loadConfig } from '../../config/wgquick.js';
import { Daemon } from '../../daemon/daemon.js';
import { logFilePath, pidFilePath, runDir, validateInterfaceName } from '../../daemon/paths.js';
import type { DeviceStatus } from '../../daemon/status-types.js';
import { AgentVpnError } from '../../errors.js';
import { interfaceOption, printResult, runCommand, toAgentVpnError, type GlobalArgs } from '../output.js';

/** How long `up` waits for the background daemon to report that the interface is up. */
const START_TIMEOUT_MS = 30_000;

interface UpArgs extends GlobalArgs {
  config: string;
  interface: string;
  foreground: boolean;
  'listen-port'?: number;
  'log-level': string;
}

type ChildReport = { type: 'ready'; status: DeviceStatus } | { type: 'error'; error: ReturnType<AgentVpnError['toJSON']> };

function describeUp(s: DeviceStatus): string {
  return `${s.interface} is up: public key ${s.publicKey}, listening on UDP ${s.listenPort}, ${s.peers.length} peer(s)`;
}

/** Runs the daemon in this process until SIGTERM/SIGINT or `agentvpn down`. */
async function runForeground(args: UpArgs): Promise<void> {
  const iface = validateInterfaceName(args.interface);
  const config = await loadConfig(args.config);
  if (args['listen-port'] !== undefined) config.listenPort = args['listen-port'];
  const log = pino({ level: args['log-level'], base: { iface } }, pino.destination(2));
  const daemon = new Daemon({ iface, config, log });
  const report = (msg: ChildReport) => process.send?.(msg);
  try {
    await daemon.start();
  } catch (e) {
    report({ type: 'error', error: toAgentVpnError(e).toJSON() });
    throw e;
  }
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
  await loadConfig(args.config); // report config errors here, before anything starts
  mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  const logFd = openSync(logFilePath(iface), 'a', 0o600);
  const bin = fileURLToPath(new URL('../../../bin/agentvpn.js', import.meta.url));
  const childArgs = [bin, 'up', '--foreground', '--config', args.config, '--interface', iface, '--log-level', args['log-level']];
  if (args['listen-port'] !== undefined) childArgs.push('--listen-port', String(args['listen-port']));
  const child = spawn(process.execPath, childArgs, { detached: true, stdio: ['ignore', logFd, logFd, 'ipc'] });

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
  describe: 'Start the daemon: create the interface and connect to the peers of a wg-quick style config',
  builder: (y) =>
    y
      .option('config', { alias: 'c', type: 'string', demandOption: true, describe: 'wg-quick style config file ([Interface] and [Peer] sections)' })
      .option('interface', interfaceOption)
      .option('foreground', { alias: 'f', type: 'boolean', default: false, describe: 'Stay in the foreground (systemd, containers, tests)' })
      .option('listen-port', { type: 'number', describe: 'UDP port to listen on (overrides ListenPort)' })
      .option('log-level', { type: 'string', default: process.env.AGENTVPN_LOG_LEVEL ?? 'info', choices: ['debug', 'info', 'warn', 'error'] }),
  handler: runCommand<UpArgs>((args) => (args.foreground ? runForeground(args) : runBackground(args))),
};
