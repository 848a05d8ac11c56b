import { connect, type Socket } from 'node:net';
import { AgentVpnError } from '../errors.js';
import type { ControlResponse, DaemonEvent, StreamLine } from './control-protocol.js';
import { controlSocketPath, logFilePath } from './paths.js';
import { socketAnswers } from '../util/unix-socket.js';

// Status of a big device can be large; this only guards against a runaway peer on the socket.
const MAX_RESPONSE_CHARS = 16 * 1024 * 1024;

export interface CallOptions {
  timeoutMs?: number;
  /** Another socket than the interface's (a container's mounted run dir, say). */
  socketPath?: string;
}

/** A client holds at most this many unread stream events, then stops reading: the daemon's bounded queue takes over. */
const MAX_UNREAD_EVENTS = 1024;

let nextId = 1;

/** Call one method of the daemon for `iface`; returns its result or throws the daemon's AgentVpnError. */
export function callDaemon(iface: string, method: string, params?: unknown, { timeoutMs = 5000, socketPath }: CallOptions = {}): Promise<unknown> {
  const path = socketPath ?? controlSocketPath(iface);
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let buf = '';
    let settled = false;
    const finish = (err: AgentVpnError | null, result?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(result);
    };
    const timer = setTimeout(() => finish(new AgentVpnError(
      'DAEMON_TIMEOUT',
      `the agentvpn daemon for interface ${iface} did not answer "${method}" within ${timeoutMs} ms`,
      `it may be hung: check its log at ${logFilePath(iface)}`,
    )), timeoutMs);

    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify({ id, method, params: params ?? {} }) + '\n'));
    sock.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        const res = parseResponse(buf.slice(0, nl), id, iface);
        if (res instanceof AgentVpnError) finish(res);
        else finish(null, res.result);
      } else if (buf.length > MAX_RESPONSE_CHARS) {
        finish(protocolError(iface, 'response too long'));
      }
    });
    sock.on('error', (e) => finish(connectError(iface, e as NodeJS.ErrnoException)));
    sock.on('close', () => finish(new AgentVpnError(
      'DAEMON_CLOSED',
      `the agentvpn daemon for interface ${iface} closed the connection without answering "${method}"`,
      `it may have exited: check its log at ${logFilePath(iface)}`,
    )));
  });
}

/**
 * One open stream of the daemon (control-protocol.ts): events are read on demand with next(),
 * at most MAX_UNREAD_EVENTS buffered here; close() ends it.
 */
export class ControlStreamConnection {
  private readonly unread: DaemonEvent[] = [];
  private waiter: { resolve(e: DaemonEvent | null): void; reject(e: Error): void } | null = null;
  private failure: AgentVpnError | null = null;
  private done = false;
  private buf = '';

  /** `early`: what came after the ok answer in the same read (the first events, say). */
  constructor(private readonly sock: Socket, private readonly id: number, private readonly iface: string, early = '') {
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('error', (e: NodeJS.ErrnoException) => this.fail(connectError(iface, e)));
    sock.on('close', () => this.fail(new AgentVpnError('DAEMON_CLOSED', `the agentvpn daemon for interface ${iface} closed the event stream`,
      'it may have exited or restarted: check `agentvpn status`, then subscribe again')));
    if (early) this.onData(early);
  }

  /** Events read from the socket and not yet taken by next(). */
  get unreadCount(): number {
    return this.unread.length;
  }

  /** The next event, or null once close() was called; throws when the daemon ended the stream. */
  next(): Promise<DaemonEvent | null> {
    const ev = this.unread.shift();
    if (ev) {
      if (this.unread.length < MAX_UNREAD_EVENTS / 2) this.sock.resume();
      return Promise.resolve(ev);
    }
    if (this.done) return Promise.resolve(null);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  close(): void {
    if (this.done) return;
    this.done = true;
    this.unread.length = 0;
    this.sock.destroy();
    this.settle(null);
  }

  /** Events only; the stream's first line (its ok) was read before this object existed. */
  private onData(chunk: string): void {
    this.buf += chunk;
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      this.onLine(line);
    }
    if (this.buf.length > MAX_RESPONSE_CHARS) this.fail(protocolError(this.iface, 'stream line too long'));
  }

  private onLine(text: string): void {
    let line: StreamLine;
    try {
      line = JSON.parse(text) as StreamLine;
    } catch {
      return this.fail(protocolError(this.iface, 'stream line is not JSON'));
    }
    if (line?.id !== this.id) return; // not ours (a refusal of a stray request): nothing to deliver
    if ('end' in line && line.end) {
      return this.fail(new AgentVpnError(String(line.end.code), String(line.end.message), String(line.end.hint ?? '')));
    }
    if (!('event' in line) || typeof line.event?.type !== 'string') return;
    if (this.waiter) return this.settle(line.event);
    this.unread.push(line.event);
    if (this.unread.length >= MAX_UNREAD_EVENTS) this.sock.pause();
  }

  private fail(err: AgentVpnError): void {
    if (this.done || this.failure) return;
    this.failure = err;
    this.sock.destroy();
    if (this.waiter && this.unread.length === 0) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(err);
    }
  }

  private settle(ev: DaemonEvent | null): void {
    const w = this.waiter;
    this.waiter = null;
    w?.resolve(ev);
  }
}

/**
 * Opens a streaming method ("events"): resolves once the daemon accepted the subscription (its
 * refusal throws as usual), then the connection carries the stream.
 */
export function openDaemonStream(iface: string, method: string, params?: unknown, { timeoutMs = 5000, socketPath }: CallOptions = {}): Promise<{ accepted: unknown; stream: ControlStreamConnection }> {
  const path = socketPath ?? controlSocketPath(iface);
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let buf = '';
    let settled = false;
    const fail = (err: AgentVpnError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new AgentVpnError('DAEMON_TIMEOUT',
      `the agentvpn daemon for interface ${iface} did not accept "${method}" within ${timeoutMs} ms`, `it may be hung: check its log at ${logFilePath(iface)}`)), timeoutMs);
    const onData = (chunk: string): void => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_RESPONSE_CHARS) fail(protocolError(iface, 'response too long'));
        return;
      }
      const res = parseResponse(buf.slice(0, nl), id, iface);
      if (res instanceof AgentVpnError) return fail(res);
      settled = true;
      clearTimeout(timer);
      sock.off('data', onData);
      sock.removeAllListeners('error').removeAllListeners('close');
      resolve({ accepted: res.result, stream: new ControlStreamConnection(sock, id, iface, buf.slice(nl + 1)) });
    };
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify({ id, method, params: params ?? {} }) + '\n'));
    sock.on('data', onData);
    sock.on('error', (e) => fail(connectError(iface, e as NodeJS.ErrnoException)));
    sock.on('close', () => fail(new AgentVpnError('DAEMON_CLOSED', `the agentvpn daemon for interface ${iface} closed the connection without answering "${method}"`,
      `it may have exited: check its log at ${logFilePath(iface)}`)));
  });
}

/** True when something accepts connections on iface's control socket; false when nothing listens there. */
export function isDaemonAnswering(iface: string, timeoutMs = 1000): Promise<boolean> {
  return socketAnswers(controlSocketPath(iface), timeoutMs).catch((e: NodeJS.ErrnoException) => {
    throw connectError(iface, e);
  });
}

function parseResponse(line: string, id: number, iface: string): { result: unknown } | AgentVpnError {
  let res: ControlResponse;
  try {
    res = JSON.parse(line) as ControlResponse;
  } catch {
    return protocolError(iface, 'response is not JSON');
  }
  if (typeof res !== 'object' || res === null || res.id !== id) return protocolError(iface, 'response does not match the request');
  if (res.ok === true) return { result: res.result };
  if (res.ok === false && typeof res.code === 'string') {
    return new AgentVpnError(res.code, String(res.message ?? res.code), String(res.hint ?? ''));
  }
  return protocolError(iface, 'response has no "ok" field');
}

function protocolError(iface: string, what: string): AgentVpnError {
  return new AgentVpnError(
    'CONTROL_PROTOCOL',
    `bad answer from the agentvpn daemon for interface ${iface}: ${what}`,
    'make sure the agentvpn CLI and daemon are the same version',
  );
}

function connectError(iface: string, e: NodeJS.ErrnoException): AgentVpnError {
  switch (e.code) {
    case 'ENOENT':
    case 'ECONNREFUSED':
      return new AgentVpnError(
        'DAEMON_NOT_RUNNING',
        `no agentvpn daemon for interface ${iface}`,
        'start it with `sudo agentvpn up --config FILE` (or pass --interface)',
        { cause: e },
      );
    case 'EACCES':
    case 'EPERM':
      return new AgentVpnError('CONTROL_PERMISSION', `not allowed to talk to the agentvpn daemon for interface ${iface}`, 'use sudo', { cause: e });
    case 'ECONNRESET':
    case 'EPIPE':
      return new AgentVpnError('DAEMON_CLOSED', `the agentvpn daemon for interface ${iface} closed the connection`, 'it may have exited; run `agentvpn status` to check', { cause: e });
    default:
      return new AgentVpnError('CONTROL_ERROR', `cannot reach the agentvpn daemon for interface ${iface}: ${e.message}`, `check ${controlSocketPath(iface)}`, { cause: e });
  }
}
