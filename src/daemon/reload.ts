import type { Logger as PinoLogger } from 'pino';
import { loadUpSettings, SETTING_KEYS, type SettingKey, type UpSettings } from '../config/config-file.js';
import { AgentVpnError } from '../errors.js';

/**
 * `agentvpn reload` and SIGHUP: the config file (and the environment and flags the daemon
 * started with) read again, and what changed applied without touching the tunnels. What can
 * only change with a new interface or socket is reported as needing a restart, and the
 * daemon goes on with the old value.
 */

/** What a running daemon can change in place; each mode applies its own subset. */
export interface ReloadTarget {
  /** Settings this mode applies live (the rest need a restart). */
  live: readonly SettingKey[];
  /** Applies the changed live settings; called with the new settings, the old ones still in `current`. */
  apply(next: UpSettings, changed: readonly SettingKey[]): Promise<void>;
  /** Work every reload does even when no setting changed (static mode: read the policy file again). */
  refresh?(): Promise<string[]>;
}

export interface ReloadReport {
  /** Settings changed and applied. */
  applied: SettingKey[];
  /** Settings changed in the file but still running with the old value until a restart. */
  needsRestart: SettingKey[];
  /** Other things done (e.g. "policy file re-read"). */
  refreshed: string[];
  /** A one-paragraph summary for the CLI and the log. */
  message: string;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The reasons a setting needs a restart, for the message. */
const RESTART_REASON: Partial<Record<SettingKey, string>> = {
  interface: 'the TUN device is created at start',
  'listen-port': 'the UDP socket is bound at start',
  mtu: 'the interface MTU is set at start',
  token: 'the token is used for the first join only',
};

export function describeReload(r: Omit<ReloadReport, 'message'>): string {
  const parts: string[] = [];
  parts.push(r.applied.length ? `applied: ${r.applied.join(', ')}` : 'no live setting changed');
  if (r.refreshed.length) parts.push(r.refreshed.join('; '));
  if (r.needsRestart.length) {
    const why = r.needsRestart.map((k) => (RESTART_REASON[k] ? `${k} (${RESTART_REASON[k]})` : k));
    parts.push(`changed but needs a restart (\`systemctl restart agentvpn@IFACE\` or \`agentvpn down\` + \`up\`): ${why.join(', ')}; running with the old values`);
  }
  return parts.join('; ');
}

/** Holds the settings in force and re-reads them on demand; one reload at a time. */
export class Reloader {
  private running: Promise<ReloadReport> | null = null;
  private queued: Promise<ReloadReport> | null = null;

  constructor(
    /** The settings in force (after a reload: the old values of settings that need a restart stay). */
    public current: UpSettings,
    private readonly source: { flags: Record<string, unknown>; env: NodeJS.ProcessEnv; configFile?: string },
    private readonly target: ReloadTarget,
    private readonly log: PinoLogger,
  ) {}

  /**
   * Reads the settings again and applies the changes. A file that no longer parses changes
   * nothing (the error says why). Asked while a reload runs, it queues one more that every
   * later caller shares, so a burst of SIGHUPs costs two reads, not one per signal.
   */
  reload(): Promise<ReloadReport> {
    if (!this.running) return this.start();
    this.queued ??= this.running.catch(() => {}).then(() => {
      this.queued = null;
      return this.start();
    });
    return this.queued;
  }

  private start(): Promise<ReloadReport> {
    this.running = this.reloadOnce().finally(() => (this.running = null));
    return this.running;
  }

  private async reloadOnce(): Promise<ReloadReport> {
    let next: UpSettings;
    try {
      next = loadUpSettings(this.source.flags, this.source.env, this.source.configFile).settings;
    } catch (e) {
      const err = e instanceof AgentVpnError ? e : new AgentVpnError('RELOAD_FAILED', (e as Error).message, 'see the daemon log');
      this.log.warn({ event: 'reload-refused', code: err.code, err: err.message, hint: err.hint }, 'reload refused; the settings in force stay');
      throw new AgentVpnError(err.code, `reload refused, nothing changed: ${err.message}`, err.hint);
    }
    const changed = SETTING_KEYS.filter((k) => !same(this.current[k], next[k]));
    const applied = changed.filter((k) => this.target.live.includes(k));
    const needsRestart = changed.filter((k) => !this.target.live.includes(k));
    if (applied.length) await this.target.apply(next, applied);
    const refreshed = (await this.target.refresh?.()) ?? [];
    // Live settings move to their new values; the others keep the running ones, so the next reload reports them again.
    const updated = { ...this.current } as Record<SettingKey, unknown>;
    for (const k of applied) updated[k] = next[k];
    this.current = updated as unknown as UpSettings;
    const report = { applied, needsRestart, refreshed };
    const message = describeReload(report);
    this.log.info({ event: 'reloaded', applied, needsRestart }, `reload: ${message}`);
    return { ...report, message };
  }
}
