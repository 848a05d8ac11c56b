import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { SystemdNotifier, takeNotifyEnv } from '../../src/daemon/sd-notify.js';

const LISTENER = new URL('../fixtures/notify-listener.py', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'avpn-notify-'));
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill();
  rmSync(dir, { recursive: true, force: true });
});

/** A python3 listener on `path`; resolves once it is bound, with the datagrams it got so far. */
async function listen(path: string): Promise<{ messages: string[]; next(): Promise<string> }> {
  const child = spawn('python3', [LISTENER, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const messages: string[] = [];
  const waiters: ((m: string) => void)[] = [];
  let bound!: () => void;
  const ready = new Promise<void>((r) => (bound = r));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const j = JSON.parse(line) as { listening?: string; msg?: string };
    if (j.listening) return bound();
    messages.push(j.msg!);
    waiters.shift()?.(j.msg!);
  });
  await ready;
  let read = 0;
  return {
    messages,
    next: () => (read < messages.length ? Promise.resolve(messages[read++]) : new Promise((r) => waiters.push((m) => { read++; r(m); }))),
  };
}

const quiet = pino({ level: 'silent' });

describe('sd_notify', () => {
  it('takes NOTIFY_SOCKET and the watchdog out of the environment (children must not notify in our name)', () => {
    const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: '3000000', WATCHDOG_PID: '42', OTHER: '1' };
    expect(takeNotifyEnv(env, 42)).toEqual({ socket: '/run/x', watchdogEveryMs: 1500 });
    expect(env).toEqual({ OTHER: '1' });
    expect(takeNotifyEnv({ NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: '3000000', WATCHDOG_PID: '7' }, 42)).toEqual({ socket: '/run/x', watchdogEveryMs: null });
    expect(takeNotifyEnv({ NOTIFY_SOCKET: '/run/x', WATCHDOG_USEC: 'soon' }, 42)).toEqual({ socket: '/run/x', watchdogEveryMs: null });
    expect(takeNotifyEnv({ WATCHDOG_USEC: '3000000' }, 42)).toBeNull();
  });

  for (const kind of ['path', 'abstract'] as const) {
    it(`sends READY, STATUS, WATCHDOG and STOPPING to a ${kind} socket`, async () => {
      const path = kind === 'path' ? join(dir, 'notify.sock') : `@avpn-notify-test-${process.pid}`;
      const l = await listen(path);
      const n = new SystemdNotifier({ socket: path, watchdogEveryMs: 50 }, quiet);
      n.ready('up, 2 peers');
      expect(await l.next()).toBe('READY=1\nSTATUS=up, 2 peers');
      expect(await l.next()).toBe('WATCHDOG=1');
      expect(await l.next()).toBe('WATCHDOG=1'); // from the timer
      n.status('up, 2 peers'); // unchanged: not sent
      n.status('up, 3 peers\nsecond line');
      let m = await l.next();
      while (m === 'WATCHDOG=1') m = await l.next();
      expect(m).toBe('STATUS=up, 3 peers second line');
      n.stopping();
      m = await l.next();
      while (m === 'WATCHDOG=1') m = await l.next();
      expect(m).toBe('STOPPING=1\nSTATUS=stopping');
      const after = l.messages.length;
      await new Promise((r) => setTimeout(r, 200));
      expect(l.messages.length).toBe(after); // the watchdog stopped with STOPPING
      expect(n.stats.failed).toBe(0);
    });
  }

  it('a socket nobody listens on is counted, not thrown', () => {
    const n = new SystemdNotifier({ socket: join(dir, 'nobody.sock'), watchdogEveryMs: null }, quiet);
    n.ready('up');
    n.stopping();
    expect(n.stats).toEqual({ sent: 0, failed: 2 });
  });

  it('a path longer than sun_path is refused, never truncated', () => {
    const n = new SystemdNotifier({ socket: `/${'x'.repeat(200)}`, watchdogEveryMs: null }, quiet);
    n.ready('up');
    expect(n.stats.failed).toBe(1);
  });
});
