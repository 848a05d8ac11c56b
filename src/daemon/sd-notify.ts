import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Logger as PinoLogger } from 'pino';
import { AgentVpnError } from '../errors.js';

/**
 * systemd's notify protocol (sd_notify(3)) for `Type=notify` units: newline-separated
 * VARIABLE=value assignments, one datagram each, to the unix socket in NOTIFY_SOCKET.
 *
 * | message       | when we send it                                                          |
 * | ------------- | ------------------------------------------------------------------------ |
 * | READY=1       | once, when the interface is up (fleet mode: the first join done)         |
 * | STATUS=text   | at READY and whenever the one-line summary changes ("up, 3 peers, …")    |
 * | WATCHDOG=1    | every WATCHDOG_USEC/2 from a timer on the main loop: a stuck loop stops it |
 * | RELOADING=1   | when a reload starts (followed by READY=1 when it is done)               |
 * | STOPPING=1    | when shutdown begins                                                     |
 *
 * Nothing is sent when NOTIFY_SOCKET is unset. The variables are removed from our environment
 * at once, so no child process (iperf3, nft, ip) talks to systemd in our name.
 */

/** The addon (binding.gyp target agentvpn_notify), loaded only when systemd asks for notifications. */
interface NotifyAddon {
  notify(socketPath: string, message: Buffer): void;
}

const ADDON_PATH = fileURLToPath(new URL('../../build/Release/agentvpn_notify.node', import.meta.url));

function loadAddon(): NotifyAddon {
  const hint = 'run npm ci (needs python3, make, g++), or unset NOTIFY_SOCKET (and use Type=simple)';
  if (!existsSync(ADDON_PATH)) throw new AgentVpnError('NATIVE_MISSING', `notify addon not built: ${ADDON_PATH} is missing`, hint);
  return createRequire(import.meta.url)(ADDON_PATH) as NotifyAddon;
}

/** The notify settings systemd passed us, or null when we do not run under a Type=notify unit. */
export interface NotifyEnv {
  socket: string;
  /** Half of WatchdogSec=, in ms: how often to ping; null when the unit has no watchdog. */
  watchdogEveryMs: number | null;
}

/** Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, and removes them from `env`. */
export function takeNotifyEnv(env: NodeJS.ProcessEnv = process.env, pid = process.pid): NotifyEnv | null {
  const socket = env.NOTIFY_SOCKET;
  const usec = Number(env.WATCHDOG_USEC);
  const watchdogPid = env.WATCHDOG_PID;
  delete env.NOTIFY_SOCKET;
  delete env.WATCHDOG_USEC;
  delete env.WATCHDOG_PID;
  if (!socket) return null;
  // The watchdog is ours unless systemd named another process (it does after a re-exec).
  const ours = watchdogPid === undefined || Number(watchdogPid) === pid;
  const watchdogEveryMs = ours && Number.isInteger(usec) && usec > 0 ? Math.max(1, Math.floor(usec / 2000)) : null;
  return { socket, watchdogEveryMs };
}

/** Sends the daemon's lifecycle to systemd; failures are counted and logged once, never thrown. */
export class SystemdNotifier {
  readonly stats = { sent: 0, failed: 0 };
  private watchdog: NodeJS.Timeout | null = null;
  private lastStatus = '';
  private readonly addon: NotifyAddon;

  constructor(private readonly env: NotifyEnv, private readonly log: PinoLogger) {
    this.addon = loadAddon();
  }

  /** A notifier when NOTIFY_SOCKET is set, else null; the variables are gone from process.env either way. */
  static fromEnvironment(log: PinoLogger): SystemdNotifier | null {
    const env = takeNotifyEnv();
    return env ? new SystemdNotifier(env, log) : null;
  }

  private send(message: string): void {
    try {
      this.addon.notify(this.env.socket, Buffer.from(message));
      this.stats.sent++;
    } catch (e) {
      if (this.stats.failed++ === 0) this.log.warn({ err: (e as Error).message, socket: this.env.socket }, 'cannot notify systemd; carrying on');
    }
  }

  /** One line: systemd shows it in `systemctl status`, so newlines would cut it. */
  private static statusLine(text: string): string {
    return `STATUS=${text.replace(/[\r\n]+/g, ' ')}`;
  }

  ready(status: string): void {
    this.lastStatus = status;
    this.send(`READY=1\n${SystemdNotifier.statusLine(status)}`);
    this.startWatchdog();
  }

  /** Sends STATUS= only when the text changed. */
  status(text: string): void {
    if (text === this.lastStatus) return;
    this.lastStatus = text;
    this.send(SystemdNotifier.statusLine(text));
  }

  reloading(): void {
    // MONOTONIC_USEC lets systemd ≥ 253 match the reload to this message; older ones ignore it.
    const usec = process.hrtime.bigint() / 1000n;
    this.send(`RELOADING=1\nMONOTONIC_USEC=${usec}`);
  }

  reloaded(status: string): void {
    this.lastStatus = status;
    this.send(`READY=1\n${SystemdNotifier.statusLine(status)}`);
  }

  stopping(): void {
    this.stopWatchdog();
    this.send('STOPPING=1\nSTATUS=stopping');
  }

  private startWatchdog(): void {
    const every = this.env.watchdogEveryMs;
    if (every === null || this.watchdog) return;
    this.send('WATCHDOG=1');
    // A timer on the main loop, on purpose: if the loop is stuck the pings stop and systemd restarts us.
    this.watchdog = setInterval(() => this.send('WATCHDOG=1'), every);
    this.watchdog.unref();
  }

  private stopWatchdog(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
  }
}
