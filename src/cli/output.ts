import { AgentVpnError } from '../errors.js';
import { DEFAULT_INTERFACE } from '../tun/interface-name.js';

/** Options every command gets from main.ts. */
export interface GlobalArgs {
  json: boolean;
}

/** Colour only for a person at a terminal (and never when NO_COLOR is set). */
function useColor(stream: NodeJS.WriteStream): boolean {
  return Boolean(stream.isTTY) && !process.env.NO_COLOR;
}

export function bold(text: string, stream: NodeJS.WriteStream = process.stdout): string {
  return useColor(stream) ? `\x1b[1m${text}\x1b[0m` : text;
}

/** Print a successful result: `{"ok":true,...data}` with --json, else the human text. */
export function printResult(json: boolean, data: Record<string, unknown>, human: () => string): void {
  process.stdout.write(json ? JSON.stringify({ ok: true, ...data }) + '\n' : human() + '\n');
}

/** Any thrown value as an AgentVpnError; unexpected ones become INTERNAL. */
export function toAgentVpnError(e: unknown): AgentVpnError {
  if (e instanceof AgentVpnError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new AgentVpnError('INTERNAL', `internal error: ${message}`, 'this is a bug in agentvpn; please report it with the command you ran', { cause: e });
}

/** The CLI error format: JSON on stdout with --json, else `error:`/`hint:` lines on stderr. */
export function printError(e: unknown, json: boolean): void {
  const err = toAgentVpnError(e);
  if (json) {
    process.stdout.write(JSON.stringify(err.toJSON()) + '\n');
  } else {
    process.stderr.write(`${bold('error:', process.stderr)} ${err.message}\nhint: ${err.hint}\n`);
    if (err.code === 'INTERNAL' && process.env.AGENTVPN_DEBUG) process.stderr.write(`${(err.cause as Error)?.stack ?? ''}\n`);
  }
}

/** Wrap a command handler so every failure is printed in the CLI format and exits 1. */
export function runCommand<A extends GlobalArgs>(fn: (args: A) => unknown | Promise<unknown>): (args: A) => Promise<void> {
  return async (args) => {
    try {
      await fn(args);
    } catch (e) {
      printError(e, Boolean(args.json));
      process.exitCode = 1;
    }
  };
}

/** Rows as left-aligned columns separated by two spaces. */
export function columns(rows: string[][], indent = ''): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows
    .map((row) => indent + row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]))).join('  '))
    .join('\n');
}

/** Bytes as `wg show` prints them: B, then KiB/MiB/GiB/TiB with two decimals. */
export function formatBytes(n: number): string {
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  if (n < 1024) return `${n} B`;
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(2)} ${units[u]}`;
}

/** A duration as `wg show` words it: "1 hour, 2 minutes, 3 seconds". */
export function formatDuration(ms: number): string {
  let s = Math.max(0, Math.floor(ms / 1000));
  const parts: string[] = [];
  for (const [name, size] of [['day', 86400], ['hour', 3600], ['minute', 60], ['second', 1]] as const) {
    const k = Math.floor(s / size);
    s -= k * size;
    if (k) parts.push(`${k} ${name}${k === 1 ? '' : 's'}`);
  }
  return parts.length ? parts.join(', ') : '0 seconds';
}

/** A past instant: "12 seconds ago", "just now". */
export function formatAgo(thenMs: number, nowMs = Date.now()): string {
  return nowMs - thenMs < 1000 ? 'just now' : `${formatDuration(nowMs - thenMs)} ago`;
}

/** The --interface option shared by the commands that talk to a daemon. */
export const interfaceOption = {
  alias: 'i',
  type: 'string',
  default: DEFAULT_INTERFACE,
  describe: 'interface name (selects the daemon)',
} as const;
