import type { Stats } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { AgentVpnError } from '../errors.js';
import { checkRootFileMode, readRootFile } from './root-file.js';
import { TRUST_MODES, type TrustMode } from '../trust/store.js';
import { LOG_LEVELS, type LogLevel } from '../util/logger.js';

/**
 * The settings of `agentvpn up`, from four sources with one precedence:
 *
 *     command-line flags  >  environment (AGENTVPN_*)  >  config file (--config-file)  >  defaults
 *
 * The config file is one JSON object whose keys are up's long flag names, e.g.
 *
 *     { "registry": "https://reg.example:7443", "name": "planner", "cap": ["llm.plan"], "log-level": "info" }
 *
 * Unknown keys and values of the wrong type are refused, naming the key. Relative paths in the
 * file are relative to the file's directory. Because the daemon runs as root and the file says
 * which policy, registry and wg-quick config it uses, a file that others may write is refused,
 * and so is a token in a file that others may read (as sshd does with its keys).
 */

type Kind = 'string' | 'strings' | 'boolean' | 'integer' | 'path';

interface SettingSpec {
  kind: Kind;
  /** The environment variable that sets it, when one does. */
  env?: string;
  choices?: readonly string[];
  min?: number;
  max?: number;
  /** A valid value, for hints. */
  example: string;
}

/** Every setting a config file may hold (the long flag names of `up`). */
export const UP_SETTINGS = {
  config: { kind: 'path', example: '"/etc/agentvpn/wg0.conf"' },
  registry: { kind: 'string', env: 'AGENTVPN_REGISTRY', example: '"https://reg.example:7443"' },
  token: { kind: 'string', env: 'AGENTVPN_TOKEN', example: '"<join token>"' },
  // A token on the command line is in /proc/PID/cmdline, readable by every local user: a file is not.
  'token-file': { kind: 'path', env: 'AGENTVPN_TOKEN_FILE', example: '"/etc/agentvpn/join-token"' },
  name: { kind: 'string', env: 'AGENTVPN_NAME', example: '"planner"' },
  cap: { kind: 'strings', example: '["llm.plan", "llm.inference@1;model=llama3"]' },
  network: { kind: 'string', env: 'AGENTVPN_NETWORK', example: '"default"' },
  'state-dir': { kind: 'path', env: 'AGENTVPN_STATE_DIR', example: '"/var/lib/agentvpn"' },
  'registry-ca': { kind: 'path', example: '"/etc/agentvpn/registry-ca.pem"' },
  dns: { kind: 'boolean', example: 'true' },
  firewall: { kind: 'boolean', example: 'true' },
  // IPv6 (the overlay carries it) needs 1280; the largest an IP packet length can say is 65535.
  mtu: { kind: 'integer', min: 1280, max: 65535, example: '1380' },
  interface: { kind: 'string', example: '"agentvpn0"' },
  'listen-port': { kind: 'integer', min: 0, max: 65535, example: '51820' },
  'log-level': { kind: 'string', env: 'AGENTVPN_LOG_LEVEL', choices: LOG_LEVELS, example: '"info"' },
  policy: { kind: 'path', example: '"/etc/agentvpn/policy.json"' },
  trust: { kind: 'string', choices: TRUST_MODES, example: '"tofu"' },
  'rotate-every': { kind: 'string', example: '"7d"' },
  metrics: { kind: 'string', example: '"127.0.0.1:9580"' },
} as const satisfies Record<string, SettingSpec>;

export type SettingKey = keyof typeof UP_SETTINGS;
export const SETTING_KEYS = Object.keys(UP_SETTINGS) as SettingKey[];

/** The resolved settings of `up` (defaults filled in). */
export interface UpSettings {
  config?: string;
  registry?: string;
  token?: string;
  'token-file'?: string;
  name?: string;
  cap: string[];
  network: string;
  'state-dir'?: string;
  'registry-ca'?: string;
  dns: boolean;
  firewall: boolean;
  mtu: number;
  interface: string;
  'listen-port'?: number;
  'log-level': LogLevel;
  policy?: string;
  trust: TrustMode;
  'rotate-every'?: string;
  metrics?: string;
}

/** Where each setting's value came from (what `reload` and the docs call the precedence). */
export type SettingSource = 'flag' | 'env' | 'file' | 'default';

export const UP_DEFAULTS = {
  cap: [] as string[],
  network: 'default',
  dns: true,
  firewall: true,
  // 1380, not WireGuard's 1420: a relayed packet carries 33 more bytes (relay frame), and
  // 1380 + 32 (WireGuard) + 33 + 8 (UDP) + 40 (IPv6) = 1493 still fits a 1500-byte link unfragmented.
  mtu: 1380,
  interface: 'agentvpn0',
  'log-level': 'info' as LogLevel,
  trust: 'tofu' as TrustMode,
} satisfies Partial<UpSettings>;

/** Some settings, validated, from one source. */
type SettingValues = Partial<Record<SettingKey, unknown>>;

/** A value as the user wrote it, for messages (NaN, which JSON would call null, stays NaN). */
function shown(value: unknown): string {
  return typeof value === 'number' ? String(value) : JSON.stringify(value);
}

/** Where a value came from, and how an example of it is written there. */
type Origin = { file: string } | { env: string } | 'flag';

function exampleFor(key: SettingKey, origin: Origin): string {
  const example = UP_SETTINGS[key].example;
  if (origin === 'flag') return `e.g. --${key} ${example.replace(/^\["?|"?\]$|^"|"$/g, '').split('", "')[0]}`;
  if ('env' in origin) return `e.g. ${origin.env}=${example.replace(/^"|"$/g, '')}`;
  return `e.g. "${key}": ${example}`;
}

/** Checks one value against its spec; errors name it as its origin does (`FILE: "mtu"`, `environment variable AGENTVPN_NAME`, `--mtu`). */
function checkValue(key: SettingKey, value: unknown, origin: Origin): unknown {
  const spec: SettingSpec = UP_SETTINGS[key];
  const where = origin === 'flag' ? `--${key}` : 'env' in origin ? `environment variable ${origin.env}` : `${origin.file}: "${key}"`;
  const bad = (what: string) => new AgentVpnError('CONFIG_INVALID', `${where} ${what}`, exampleFor(key, origin));
  switch (spec.kind) {
    case 'string':
    case 'path':
      if (typeof value !== 'string' || value === '') throw bad(`must be a non-empty string, not ${shown(value)}`);
      if (spec.choices && !spec.choices.includes(value)) throw bad(`must be one of ${spec.choices.join(', ')}, not "${value}"`);
      return value;
    case 'strings':
      if (!Array.isArray(value) || !value.every((v) => typeof v === 'string' && v !== '')) throw bad('must be an array of non-empty strings');
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') throw bad(`must be true or false, not ${shown(value)}`);
      return value;
    case 'integer':
      if (typeof value !== 'number' || !Number.isInteger(value) || value < spec.min! || value > spec.max!) {
        throw bad(`must be an integer from ${spec.min} to ${spec.max}, not ${shown(value)}`);
      }
      return value;
  }
}

/** The edit distance of two short strings, for "did you mean" on a misspelt key. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length];
}

function unknownKeyHint(key: string): string {
  const near = SETTING_KEYS.filter((k) => distance(k, key) <= 2);
  return near.length ? `did you mean "${near[0]}"? Keys are the long flag names of \`agentvpn up\`` : `known keys: ${SETTING_KEYS.join(', ')}`;
}

/** A root file's text and stat (root-file.ts); `what` and `hint` word a read error. */
function readWithStat(file: string, what: string, hint: string, secret?: (text: string) => string | null): { text: string; st: Stats } {
  try {
    return readRootFile(file, secret);
  } catch (e) {
    if (e instanceof AgentVpnError) throw e;
    throw new AgentVpnError('CONFIG_UNREADABLE', `cannot read ${what} ${file}: ${(e as Error).message}`, hint, { cause: e });
  }
}

/** The join token in `file` (its first line), refused when other users may read or change the file. */
export function readTokenFile(file: string): string {
  const { text } = readWithStat(file, 'token file', 'give --token-file a file holding the join token (mode 600)', () => 'a join token');
  const token = text.split('\n')[0].trim();
  if (!token) throw new AgentVpnError('CONFIG_INVALID', `token file ${file} is empty`, 'put the join token (from `agentvpn registry token create`) on its first line');
  return token;
}

/** Reads and validates a config file; relative paths in it become relative to its directory. */
export function readConfigFile(file: string): SettingValues {
  const { text, st } = readWithStat(file, 'config file', 'give --config-file a readable JSON file, e.g. /etc/agentvpn/agentvpn0.json');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new AgentVpnError('CONFIG_INVALID', `${file} is not valid JSON: ${(e as Error).message}`, 'one JSON object, e.g. {"registry": "https://reg.example:7443", "name": "planner"}', { cause: e });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new AgentVpnError('CONFIG_INVALID', `${file} must hold one JSON object`, 'e.g. {"registry": "https://reg.example:7443", "name": "planner"}');
  }
  const out: SettingValues = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (!Object.hasOwn(UP_SETTINGS, key)) throw new AgentVpnError('CONFIG_UNKNOWN_KEY', `${file}: unknown key "${key}"`, unknownKeyHint(key));
    const k = key as SettingKey;
    const checked = checkValue(k, value, { file });
    out[k] = UP_SETTINGS[k].kind === 'path' && !isAbsolute(checked as string) ? resolve(dirname(file), checked as string) : checked;
  }
  checkRootFileMode(file, st, out.token !== undefined ? 'a join token' : null);
  return out;
}

/** The settings the environment gives (the AGENTVPN_* variables of UP_SETTINGS; empty ones are unset). */
export function settingsFromEnv(env: NodeJS.ProcessEnv): SettingValues {
  const out: SettingValues = {};
  for (const key of SETTING_KEYS) {
    const name = (UP_SETTINGS[key] as SettingSpec).env;
    const value = name ? env[name] : undefined;
    if (value) out[key] = checkValue(key, value, { env: name! });
  }
  return out;
}

/** The flags given on the command line (yargs leaves absent ones undefined; NaN is a bad number). */
export function settingsFromFlags(args: Record<string, unknown>): SettingValues {
  const out: SettingValues = {};
  for (const key of SETTING_KEYS) {
    if (args[key] === undefined) continue;
    const value = args[key];
    if (Array.isArray(value) && value.length === 0) continue; // yargs' empty array: not given
    out[key] = checkValue(key, value, 'flag');
  }
  return out;
}

export interface ResolvedSettings {
  settings: UpSettings;
  sources: Record<SettingKey, SettingSource>;
}

/** Merges the sources: flags > environment > file > defaults. */
export function resolveSettings(sources: { flags: SettingValues; env: SettingValues; file: SettingValues }): ResolvedSettings {
  const settings: SettingValues = {};
  const from = {} as Record<SettingKey, SettingSource>;
  const defaults: SettingValues = UP_DEFAULTS;
  for (const key of SETTING_KEYS) {
    for (const [source, values] of [['flag', sources.flags], ['env', sources.env], ['file', sources.file], ['default', defaults]] as const) {
      if (values[key] !== undefined) {
        const v = values[key];
        settings[key] = Array.isArray(v) ? [...v] : v; // a copy: the defaults are shared
        from[key] = source;
        break;
      }
    }
  }
  return { settings: settings as unknown as UpSettings, sources: from };
}

/** The settings `up` runs with: its flags, the environment, and the config file when one is given. */
export function loadUpSettings(args: Record<string, unknown>, env: NodeJS.ProcessEnv, configFile: string | undefined): ResolvedSettings {
  return resolveSettings({ flags: settingsFromFlags(args), env: settingsFromEnv(env), file: configFile ? readConfigFile(configFile) : {} });
}
