import { chmod, mkdir } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { AgentVpnError } from '../errors.js';
import { validateInterfaceName } from '../tun/interface-name.js';
import { removeStaleSocket } from '../util/unix-socket.js';
import { applySet } from './apply.js';
import { ERRNO, LIMITS, UapiError, parseSetRequest, serializeGet } from './protocol.js';
import type { UapiTarget } from './target.js';

/** Where wg(8) looks for userspace implementations' sockets. */
export const WG_SOCKET_DIR = '/var/run/wireguard';
/** Connections at once: wg(8) opens one per command; more than this is a runaway script. */
const MAX_CONNECTIONS = 32;
/** A connection idle this long (nothing read or written) is closed: wg sends its whole request at once. */
const IDLE_TIMEOUT_MS = 10_000;
/** Request bytes held for all connections together: four requests of the largest size at once. */
const MAX_BUFFERED_BYTES = 4 * LIMITS.requestBytes;

/**
 * The UAPI socket's directory: AGENTVPN_WG_RUN_DIR, else beside a relocated AGENTVPN_RUN_DIR
 * (tests and unprivileged runs keep their sockets out of the host's /var/run/wireguard), else
 * /var/run/wireguard where wg(8) looks.
 */
export function uapiDir(): string {
  if (process.env.AGENTVPN_WG_RUN_DIR) return process.env.AGENTVPN_WG_RUN_DIR;
  if (process.env.AGENTVPN_RUN_DIR) return join(process.env.AGENTVPN_RUN_DIR, 'wireguard');
  return WG_SOCKET_DIR;
}

export function uapiSocketPath(iface: string, dir = uapiDir()): string {
  return join(dir, `${validateInterfaceName(iface)}.sock`);
}

export interface UapiLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface UapiServerOptions {
  iface: string;
  target: UapiTarget;
  log: UapiLogger;
  /** Default uapiDir(). */
  dir?: string;
  /** set=1 is refused with EPERM (fleet daemons: their peers come from the registry). */
  readOnly?: boolean;
}

/** Per connection: the request being read. */
interface Conn {
  socket: Socket;
  buf: string;
  /** null: waiting for `get=1` / `set=1`. */
  op: 'get' | 'set' | null;
  lines: string[];
  bytes: number;
  busy: boolean;
}

/**
 * The UAPI unix socket (mode 0600 in a 0700 directory: root only, like wireguard-go's). Requests
 * from all connections are applied one at a time, in arrival order.
 */
export class UapiServer {
  readonly stats = { gets: 0, sets: 0, refused: 0, oversize: 0, badOps: 0, connectionsShed: 0 };
  readonly path: string;
  private server: Server | null = null;
  private readonly conns = new Set<Conn>();
  private queue: Promise<void> = Promise.resolve();
  /** Bytes of unfinished and queued requests, all connections together. */
  private buffered = 0;

  constructor(private readonly opts: UapiServerOptions) {
    this.path = uapiSocketPath(opts.iface, opts.dir);
  }

  async start(): Promise<void> {
    const dir = this.opts.dir ?? uapiDir();
    if (await mkdir(dir, { recursive: true, mode: 0o700 })) await chmod(dir, 0o700);
    await this.removeStaleSocket();
    const server = createServer((s) => this.accept(s));
    server.maxConnections = MAX_CONNECTIONS;
    server.on('drop', () => this.stats.connectionsShed++);
    const listening = new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      // The socket is born 0600 (no window before the chmod); listen() binds synchronously, so
      // the process-wide umask is restored before anything else can create a file.
      const umask = process.umask(0o077);
      try {
        server.listen(this.path, () => { server.off('error', reject); resolve(); });
      } finally {
        process.umask(umask);
      }
    });
    await listening.catch((e: NodeJS.ErrnoException) => {
      throw e.code === 'EADDRINUSE' ? this.inUse() : e;
    });
    await chmod(this.path, 0o600);
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = null;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const c of this.conns) c.socket.destroy();
    await closed; // Node unlinks the socket file on close
  }

  private inUse(): AgentVpnError {
    return new AgentVpnError('UAPI_SOCKET_IN_USE', `${this.path} is in use by another WireGuard implementation`,
      `stop the process serving interface ${this.opts.iface} first (\`wg show ${this.opts.iface}\` reaches it)`);
  }

  /** A socket left by a crashed process is removed (as wireguard-go and wg do); a live one is not. */
  private removeStaleSocket(): Promise<void> {
    return removeStaleSocket(this.path, {
      inUse: () => this.inUse(),
      notSocket: () => new AgentVpnError('UAPI_SOCKET_BLOCKED', `${this.path} exists and is not a socket`, 'remove that file'),
    });
  }

  private accept(socket: Socket): void {
    const conn: Conn = { socket, buf: '', op: null, lines: [], bytes: 0, busy: false };
    this.conns.add(conn);
    socket.setEncoding('latin1'); // bytes stay bytes: a non-ASCII line is just an unknown key
    socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy());
    socket.on('close', () => {
      this.conns.delete(conn);
      if (!conn.busy) this.release(conn); // a request in the queue stays counted until it is done
    });
    socket.on('error', () => {}); // a client gone mid-answer must not take the daemon down
    socket.on('data', (chunk: string) => {
      conn.buf += chunk;
      this.drain(conn);
    });
  }

  /**
   * Consumes the complete lines in the buffer. A finished request pauses the socket until it is
   * answered, so what a client sends meanwhile waits in the kernel, not in our memory.
   */
  private drain(conn: Conn): void {
    let pos = 0;
    const buf = conn.buf;
    while (!conn.busy && !conn.socket.destroyed) {
      const nl = buf.indexOf('\n', pos);
      const pending = (nl < 0 ? buf.length : nl) - pos;
      if (pending > LIMITS.lineBytes || conn.bytes + pending > LIMITS.requestBytes || this.buffered + pending > MAX_BUFFERED_BYTES) {
        return this.oversize(conn);
      }
      if (nl < 0) break;
      const line = buf.slice(pos, nl);
      conn.bytes += nl + 1 - pos;
      this.buffered += nl + 1 - pos;
      pos = nl + 1;
      if (conn.op === null) {
        if (line === 'get=1') conn.op = 'get';
        else if (line === 'set=1') conn.op = 'set';
        else {
          // wireguard-go closes the connection on an unknown operation: nothing sensible to answer.
          this.stats.badOps++;
          conn.socket.destroy();
          return;
        }
      } else if (line !== '') {
        if (conn.op === 'get') this.finish(conn, Promise.resolve(new UapiError(ERRNO.EINVAL, 'get=1 takes no keys')));
        else conn.lines.push(line);
      } else {
        const op = conn.op;
        const lines = conn.lines;
        this.finish(conn, this.enqueue(() => (op === 'get' ? this.get() : this.set(lines))));
      }
    }
    conn.buf = buf.slice(pos);
  }

  /** A line or request past LIMITS: answered once, then the connection is closed. */
  private oversize(conn: Conn): void {
    this.stats.oversize++;
    conn.busy = true;
    conn.buf = '';
    conn.lines = [];
    this.release(conn);
    conn.socket.pause();
    this.answer(conn, `errno=-${ERRNO.EMSGSIZE}\n\n`);
    conn.socket.end();
  }

  /** Runs requests one at a time across connections: a set never interleaves with another. */
  private enqueue(work: () => Promise<string | UapiError>): Promise<string | UapiError> {
    const result = this.queue.then(work, work);
    this.queue = result.then(() => {}, () => {});
    return result;
  }

  private finish(conn: Conn, result: Promise<string | UapiError>): void {
    conn.busy = true;
    conn.socket.pause();
    void result.then((r) => {
      let flushed: boolean;
      if (r instanceof UapiError) {
        this.stats.refused++;
        this.opts.log.warn({ iface: this.opts.iface, errno: r.errno, reason: r.message }, 'UAPI request refused');
        flushed = this.answer(conn, `errno=-${r.errno}\n\n`);
      } else {
        flushed = this.answer(conn, `${r}errno=0\n\n`);
      }
      conn.op = null;
      conn.lines = [];
      this.release(conn);
      // The next request is read once the answer is out: a client that never reads its answers
      // cannot make us queue them.
      const next = () => {
        conn.busy = false;
        conn.socket.resume();
        this.drain(conn);
      };
      if (flushed) next();
      else conn.socket.once('drain', next);
    });
  }

  private release(conn: Conn): void {
    this.buffered -= conn.bytes;
    conn.bytes = 0;
  }

  /** Bytes of requests held in memory now (all connections). */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** False when the answer waits in our memory for the client to read it. */
  private answer(conn: Conn, text: string): boolean {
    return conn.socket.writable ? conn.socket.write(text, 'latin1') : true;
  }

  private async get(): Promise<string | UapiError> {
    this.stats.gets++;
    try {
      return serializeGet(this.opts.target.state());
    } catch (e) {
      return asUapiError(e);
    }
  }

  private async set(lines: string[]): Promise<string | UapiError> {
    this.stats.sets++;
    try {
      if (this.opts.readOnly) throw new UapiError(ERRNO.EPERM, 'this interface is managed by agentvpn (fleet mode): its UAPI is read-only');
      await applySet(this.opts.target, parseSetRequest(lines));
      return '';
    } catch (e) {
      return asUapiError(e);
    }
  }
}

function asUapiError(e: unknown): UapiError {
  if (e instanceof UapiError) return e;
  return new UapiError(ERRNO.EIO, `internal error: ${e instanceof Error ? e.message : String(e)}`);
}
