import { fstatSync } from 'node:fs';
import pino from 'pino';

/**
 * The processes' loggers (daemon, registry, relay): pino, JSON lines on stderr, one line per
 * event. Under systemd the journal stamps every line itself, so pino's own "time" is left out
 * rather than doubled; pid and hostname are the journal's fields too.
 */

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * True when stderr is connected to the journal: systemd sets JOURNAL_STREAM to "DEV:INODE" of the
 * stream it gave the service, and a redirected stderr (`2>file`) no longer matches it.
 */
export function stderrIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 2): boolean {
  const m = /^(\d+):(\d+)$/.exec(env.JOURNAL_STREAM ?? '');
  if (!m) return false;
  try {
    const st = fstatSync(fd, { bigint: true });
    return st.dev === BigInt(m[1]) && st.ino === BigInt(m[2]);
  } catch {
    return false;
  }
}

/** A logger on stderr with these base fields; no timestamp when the journal adds its own. */
export function createLogger(level: LogLevel, base: Record<string, string>, env: NodeJS.ProcessEnv = process.env): pino.Logger {
  const journal = stderrIsJournal(env);
  return pino({ level, base, timestamp: journal ? false : pino.stdTimeFunctions.epochTime }, pino.destination(2));
}
