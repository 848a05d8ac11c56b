import { chmod, mkdir } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { AgentVpnError } from '../errors.js';
import { isDaemonAnswering } from './control-client.js';
import type { ControlRequest, ControlResponse } from './control-protocol.js';
import { isControlStream, StreamWriter, type ControlStream, type StreamStats } from './control-stream.js';
import { controlSocketPath, runDir } from './paths.js';
import { removeStaleSocket } from '../util/unix-socket.js';

export type ControlHandler = (params: unknown) => unknown | Promise<unknown>;

export interface ControlServerOptions {
  /** Called when a handler throws something that is not an AgentVpnError (a bug worth logging). */
  onInternalError?: (method: string, err: unknown) => void;
}

/** A request line may not exceed this. */
export const MAX_REQUEST_BYTES = 64 * 1024;
/**
 * A connection's requests are answered one at a time, in order. Past this many waiting, its
 * socket is not read; past MAX_UNSENT_REPLY_BYTES of answers it has not read, nothing more is
 * answered until they drain. So a client that pipelines without reading holds the daemon to
 * about a megabyte (400,000 pipelined `status`es held 3.6 GB before).
 */
const MAX_WAITING_REQUESTS = 32;
const MAX_UNSENT_REPLY_BYTES = 1024 * 1024;

/**
 * The daemon's local API: newline-delimited JSON over a root-only unix socket (control-protocol.ts).
 * A handler may return a ControlStream: the connection then carries that stream until either side closes it.
 */
export class ControlServer {
  readonly stats = { requests: 0, badRequests: 0 };
  readonly streamStats: StreamStats = { eventsSent: 0, eventsDropped: 0, laggedMarkers: 0, slowClosed: 0 };
  readonly path: string;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  /** The connections that carry a stream, with its writer. */
  private readonly streams = new Map<Socket, { stream: ControlStream; writer: StreamWriter }>();

  constructor(
    readonly iface: string,
    private readonly handlers: Record<string, ControlHandler>,
    private readonly options: ControlServerOptions = {},
  ) {
    this.path = controlSocketPath(iface);
  }

  async start(): Promise<void> {
    if (this.server) return;
    const created = await mkdir(runDir(), { recursive: true, mode: 0o755 });
    if (created) await chmod(runDir(), 0o755); // mkdir's mode is narrowed by the umask
    await this.removeStaleSocket();
    const server = createServer((s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((e: NodeJS.ErrnoException) => {
      // Another daemon bound the path between our check and listen.
      if (e.code === 'EADDRINUSE') throw this.alreadyRunning();
      throw e;
    });
    // Only root may steer the daemon; the listen-to-chmod window is inside a root-owned dir.
    await chmod(this.path, 0o600);
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = null;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    // end() lets a reply already written (e.g. to "shutdown") reach the client; destroy stragglers later.
    for (const { writer } of this.streams.values()) {
      writer.end('DAEMON_STOPPING', 'the agentvpn daemon is shutting down', 'subscribe again once it is back up (`sudo agentvpn up`)');
    }
    for (const s of this.sockets) s.end();
    const timer = setTimeout(() => this.sockets.forEach((s) => s.destroy()), 1000);
    await closed; // Node unlinks the socket file on close; removing it again could hit a successor's socket
    clearTimeout(timer);
  }

  /** Open streams, and the bytes their subscribers have not read yet (bounded per stream by MAX_STREAM_QUEUE_BYTES). */
  streamsStatus(): { open: number; queuedBytes: number } & StreamStats {
    let queuedBytes = 0;
    for (const s of this.streams.keys()) queuedBytes += s.writableLength;
    return { open: this.streams.size, queuedBytes, ...this.streamStats };
  }

  /** A socket file left by a crashed daemon is removed; one a live daemon answers on is not. */
  private removeStaleSocket(): Promise<void> {
    return removeStaleSocket(this.path, {
      inUse: () => this.alreadyRunning(),
      notSocket: () => new AgentVpnError('CONTROL_SOCKET_BLOCKED', `${this.path} exists and is not a socket`,
        'remove that file, or set AGENTVPN_RUN_DIR to another directory'),
    }, () => isDaemonAnswering(this.iface));
  }

  private alreadyRunning(): AgentVpnError {
    return new AgentVpnError('ALREADY_RUNNING', `an agentvpn daemon is already running for interface ${this.iface}`,
      `stop it first with \`agentvpn down --interface ${this.iface}\``);
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => {
      this.sockets.delete(socket);
      this.streams.get(socket)?.stream.close();
      this.streams.delete(socket);
    });
    socket.on('error', () => {}); // a client vanishing mid-reply must not take the daemon down
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let discarding = false; // inside an oversize line: drop bytes until its newline
    const TOO_LONG = null;
    /** Request lines waiting their turn (TOO_LONG: a line over the limit, answered in its place). */
    const waiting: Array<string | null> = [];
    let answering = false;

    const answerWaiting = async (): Promise<void> => {
      if (answering) return;
      answering = true;
      while (waiting.length > 0 && !socket.destroyed) {
        // A stream's connection is one-way from its ok on: what the client sent after it is discarded.
        if (this.streams.has(socket)) {
          waiting.length = 0;
          break;
        }
        if (socket.writableLength > MAX_UNSENT_REPLY_BYTES) {
          await new Promise<void>((r) => {
            const done = () => {
              socket.off('drain', done);
              socket.off('close', done);
              r();
            };
            socket.once('drain', done);
            socket.once('close', done);
          });
          continue;
        }
        const line = waiting.shift()!;
        if (line === TOO_LONG) this.badRequest(socket, null, `request line longer than ${MAX_REQUEST_BYTES} bytes`);
        else await this.handleLine(socket, line);
      }
      answering = false;
      if (socket.isPaused() && !socket.destroyed) socket.resume();
    };

    socket.on('data', (chunk: Buffer) => {
      if (this.streams.has(socket)) return;
      let start = 0;
      for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
        const part = chunk.subarray(start, nl);
        if (!discarding) waiting.push(pendingBytes + part.length > MAX_REQUEST_BYTES ? TOO_LONG : Buffer.concat([...pending, part]).toString('utf8'));
        pending = [];
        pendingBytes = 0;
        discarding = false;
        start = nl + 1;
      }
      if (!discarding && start < chunk.length) {
        pending.push(chunk.subarray(start));
        pendingBytes += chunk.length - start;
        if (pendingBytes > MAX_REQUEST_BYTES) {
          waiting.push(TOO_LONG);
          pending = [];
          pendingBytes = 0;
          discarding = true;
        }
      }
      if (waiting.length >= MAX_WAITING_REQUESTS) socket.pause();
      void answerWaiting();
    });
  }

  private async handleLine(socket: Socket, line: string): Promise<void> {
    if (!line.trim()) return;
    let req: unknown;
    try {
      req = JSON.parse(line);
    } catch {
      return this.badRequest(socket, null, 'request is not valid JSON');
    }
    const r = req as Partial<ControlRequest> | null;
    const id = typeof r?.id === 'number' || typeof r?.id === 'string' ? r.id : null;
    if (typeof r !== 'object' || r === null || id === null || typeof r.method !== 'string') {
      return this.badRequest(socket, id, 'request must look like {"id":1,"method":"status","params":{}}');
    }
    const method = r.method;
    if (!Object.hasOwn(this.handlers, method)) {
      this.stats.badRequests++;
      return this.reply(socket, {
        id, ok: false, code: 'UNKNOWN_METHOD', message: `unknown control method "${method}"`,
        hint: `known methods: ${Object.keys(this.handlers).join(', ')}; make sure the CLI and daemon are the same version`,
      });
    }
    this.stats.requests++;
    try {
      const result = await this.handlers[method](r.params ?? {});
      if (isControlStream(result)) return this.openStream(socket, id, result);
      this.reply(socket, { id, ok: true, result: result ?? null });
    } catch (e) {
      this.reply(socket, this.errorResponse(id, method, e));
    }
  }

  /** Answers ok, then hands the stream a bounded writer on this connection (one stream per connection). */
  private openStream(socket: Socket, id: number | string, stream: ControlStream): void {
    if (!socket.writable || this.streams.has(socket)) {
      stream.close();
      if (socket.writable) this.badRequest(socket, id, 'this connection already carries an event stream');
      return;
    }
    const writer = new StreamWriter(socket, id, this.streamStats);
    this.streams.set(socket, { stream, writer });
    this.reply(socket, { id, ok: true, result: stream.accepted ?? null });
    stream.attach(writer);
  }

  private errorResponse(id: number | string | null, method: string, e: unknown): ControlResponse {
    if (e instanceof AgentVpnError) return { id, ok: false, code: e.code, message: e.message, hint: e.hint };
    this.options.onInternalError?.(method, e);
    return {
      id, ok: false, code: 'INTERNAL', message: `internal error in "${method}": ${e instanceof Error ? e.message : String(e)}`,
      hint: 'this is a bug in agentvpn; the daemon log has details',
    };
  }

  private badRequest(socket: Socket, id: number | string | null, message: string): void {
    this.stats.badRequests++;
    this.reply(socket, { id, ok: false, code: 'BAD_REQUEST', message, hint: 'send one JSON request per line: {"id":1,"method":"status","params":{}}' });
  }

  private reply(socket: Socket, res: ControlResponse): void {
    if (!socket.writable) return;
    let line: string;
    try {
      line = JSON.stringify(res);
    } catch (e) {
      line = JSON.stringify(this.errorResponse(res.id, 'reply', e)); // e.g. a BigInt in a result
    }
    socket.write(line + '\n');
  }
}
