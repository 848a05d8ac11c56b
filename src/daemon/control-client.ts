import { connect } from 'node:net';
import { AgentVpnError } from '../errors.js';
import type { ControlResponse } from './control-protocol.js';
import { controlSocketPath, logFilePath } from './paths.js';

// Status of a big device can be large; this only guards against a runaway peer on the socket.
const MAX_RESPONSE_CHARS = 16 * 1024 * 1024;

export interface CallOptions {
  timeoutMs?: number;
}

let nextId = 1;

/** Call one method of the daemon for `iface`; returns its result or throws the daemon's AgentVpnError. */
export function callDaemon(iface: string, method: string, params?: unknown, { timeoutMs = 5000 }: CallOptions = {}): Promise<unknown> {
  const path = controlSocketPath(iface);
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

/** True when something accepts connections on iface's control socket; false when nothing listens there. */
export function isDaemonAnswering(iface: string, timeoutMs = 1000): Promise<boolean> {
  const path = controlSocketPath(iface);
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    const done = (answer: boolean | Error): void => {
      clearTimeout(timer);
      sock.destroy();
      if (answer instanceof Error) reject(answer);
      else resolve(answer);
    };
    // A listener too busy to accept is still alive: err on the side of "answering".
    const timer = setTimeout(() => done(true), timeoutMs);
    sock.on('connect', () => done(true));
    sock.on('error', (e: NodeJS.ErrnoException) =>
      done(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? false : connectError(iface, e)));
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
