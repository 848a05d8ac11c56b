import { execFile, spawn } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { CommandModule } from 'yargs';
import pino from 'pino';
import { generatePrivateKey } from '../../crypto/x25519.js';
import { Daemon } from '../../daemon/daemon.js';
import { logFilePath, runDir } from '../../daemon/paths.js';
import { validateInterfaceName } from '../../tun/interface-name.js';
import { AgentVpnError } from '../../errors.js';
import { uapiSocketPath } from '../../uapi/server.js';
import { printError, printResult, runCommand, toAgentVpnError, type GlobalArgs } from '../output.js';

/** How long the launcher waits for the background process to report its UAPI socket ready. */
const START_TIMEOUT_MS = 20_000;
/** The MTU wireguard-go gives a new interface; wg-quick sets its own afterwards. */
const DEFAULT_MTU = 1420;

interface WgUserspaceArgs extends GlobalArgs {
  iface: string;
  foreground: boolean;
  'log-level': string;
}

type ChildReport = { type: 'ready' } | { type: 'error'; error: ReturnType<AgentVpnError['toJSON']> };

/** wireguard-go's switch: WG_PROCESS_FOREGROUND=1 keeps it attached, like -f. */
function wantsForeground(args: WgUserspaceArgs): boolean {
  return args.foreground || process.env.WG_PROCESS_FOREGROUND === '1';
}

/**
 * The interface as wireguard-go makes it: a TUN with the UAPI socket, a UDP socket on a random
 * port, a random private key it does not report, no peers, no address, no route, link down.
 * Everything else comes from wg(8) (or wg-quick) through the UAPI.
 */
async function runForeground(args: WgUserspaceArgs): Promise<void> {
  const iface = validateInterfaceName(args.iface);
  const log = pino({ level: args['log-level'], base: { iface } }, pino.destination(2));
  const report = (msg: ChildReport) => process.send?.(msg);
  const daemon = new Daemon({
    iface, log, firewall: false, bare: true,
    config: { privateKey: generatePrivateKey(), addresses: [], listenPort: 0, mtu: DEFAULT_MTU, peers: [] },
  });
  try {
    await daemon.start();
    await promisify(execFile)('ip', ['link', 'set', 'dev', iface, 'mtu', String(DEFAULT_MTU)], { timeout: 10_000 });
  } catch (e) {
    await daemon.stop();
    report({ type: 'error', error: toAgentVpnError(e).toJSON() });
    printError(e, args.json);
    process.exit(1);
  }
  process.on('unhandledRejection', (err) => log.error({ err }, 'unhandled rejection'));
  const shutdown = (signal: string) => {
    log.info({ signal }, 'stopping');
    void daemon.stop().finally(() => process.exit(0));
  };
  // SIGTERM also comes from the daemon itself when the TUN is deleted (its reads fail).
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(signal, () => shutdown(signal));
  log.info({ uapi: uapiSocketPath(iface) }, 'UAPI listener started');
  if (process.send) {
    report({ type: 'ready' });
    process.disconnect?.();
  }
}

/** Forks the foreground process and returns once its UAPI socket is ready: wg-quick then configures it. */
async function runBackground(args: WgUserspaceArgs): Promise<void> {
  const iface = validateInterfaceName(args.iface);
  mkdirSync(runDir(), { recursive: true, mode: 0o755 });
  const logFd = openSync(logFilePath(iface), 'a', 0o600);
  const bin = fileURLToPath(new URL('../../../bin/agentvpn.js', import.meta.url));
  const child = spawn(process.execPath, [bin, 'wg-userspace', '--foreground', '--log-level', args['log-level'], iface], {
    detached: true, stdio: ['ignore', logFd, logFd, 'ipc'],
  });
  const report = await new Promise<ChildReport>((resolve, reject) => {
    const timer = setTimeout(() => reject(new AgentVpnError('START_TIMEOUT', `${iface} did not come up within ${START_TIMEOUT_MS / 1000} s`, `see its log: ${logFilePath(iface)}`)), START_TIMEOUT_MS);
    child.once('message', (m) => { clearTimeout(timer); resolve(m as ChildReport); });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new AgentVpnError('DAEMON_EXITED', `agentvpn wg-userspace exited during start (code ${code})`, `see its log: ${logFilePath(iface)}`));
    });
  });
  child.removeAllListeners();
  if (child.connected) child.disconnect();
  child.unref();
  if (report.type === 'error') throw new AgentVpnError(report.error.code, report.error.message, report.error.hint);
  const uapi = uapiSocketPath(iface);
  printResult(args.json, { interface: iface, pid: child.pid, uapi, log: logFilePath(iface) }, () => `${iface}: running (pid ${child.pid}), UAPI ${uapi}, log ${logFilePath(iface)}`);
}

export const wgUserspaceCommand: CommandModule<GlobalArgs, WgUserspaceArgs> = {
  command: 'wg-userspace <iface>',
  describe: 'Run as a userspace WireGuard implementation like wireguard-go: create IFACE and its UAPI socket for wg(8) and wg-quick',
  builder: (y) =>
    y
      .positional('iface', { type: 'string', demandOption: true, describe: 'interface name' })
      .option('foreground', { alias: 'f', type: 'boolean', default: false, describe: 'Stay attached (also WG_PROCESS_FOREGROUND=1)' })
      .option('log-level', { type: 'string', default: process.env.AGENTVPN_LOG_LEVEL ?? 'info', choices: ['debug', 'info', 'warn', 'error'] }),
  handler: runCommand<WgUserspaceArgs>((args) => (wantsForeground(args) ? runForeground(args) : runBackground(args))),
};
