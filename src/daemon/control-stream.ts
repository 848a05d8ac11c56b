import type { Socket } from 'node:net';
import type { StreamLine } from './control-protocol.js';

/** Marks a handler's result as a stream (see control-protocol.ts): the server keeps the connection for it. */
export const CONTROL_STREAM = Symbol('agentvpn control stream');

/** What a streaming method returns: its first answer, then events pushed into a sink. */
export interface ControlStream {
  readonly [CONTROL_STREAM]: true;
  /** The result of the ok answer that opens the stream. */
  readonly accepted: unknown;
  /** Starts delivery: `send` takes one event, already serialized as JSON. */
  attach(sink: StreamSink): void;
  /** The connection is gone (or never got the stream): stop delivering, free the slot. */
  close(): void;
}

export interface StreamSink {
  send(eventJson: string): void;
}

export function isControlStream(x: unknown): x is ControlStream {
  return typeof x === 'object' && x !== null && (x as Partial<ControlStream>)[CONTROL_STREAM] === true;
}

/** Counters of every stream writer of one server. */
export interface StreamStats {
  eventsSent: number;
  eventsDropped: number;
  laggedMarkers: number;
  slowClosed: number;
}

/**
 * A subscriber that reads slower than events come gets no more than this queued in the daemon:
 * ~1,000 events, far more than a burst of path changes; past it events are counted, not kept.
 */
export const MAX_STREAM_QUEUE_BYTES = 256 * 1024;

/** A subscriber that has not drained its queue for this long is closed (it frees its slot). */
export const MAX_STREAM_STALL_MS = 30_000;

/**
 * Writes one stream's lines to its socket with bounded memory: past MAX_STREAM_QUEUE_BYTES
 * unsent, events are dropped and counted, and once the socket drains the subscriber gets one
 * `lagged` line saying how many it missed. A subscriber stalled past MAX_STREAM_STALL_MS is ended.
 */
export class StreamWriter implements StreamSink {
  private dropped = 0;
  private stalledSince = 0;
  private ended = false;
  private readonly prefix: string;

  constructor(private readonly socket: Socket, private readonly id: number | string, private readonly stats: StreamStats, private readonly now = () => Date.now()) {
    this.prefix = `{"id":${JSON.stringify(id)},"event":`;
    socket.on('drain', () => this.caughtUp());
  }

  send(eventJson: string): void {
    if (this.ended || !this.socket.writable) return;
    if (this.socket.writableLength > MAX_STREAM_QUEUE_BYTES) {
      this.dropped++;
      this.stats.eventsDropped++;
      this.stalledSince ||= this.now();
      if (this.now() - this.stalledSince > MAX_STREAM_STALL_MS) this.endSlow();
      return;
    }
    // Back under the bound: the client read something, so it is slow at worst, not stalled.
    this.caughtUp();
    this.stats.eventsSent++;
    this.socket.write(`${this.prefix}${eventJson}}\n`);
  }

  /** Ends the stream with a reason the client turns into an AgentVpnError, then closes the connection. */
  end(code: string, message: string, hint: string): void {
    if (this.ended) return;
    this.ended = true;
    const line: StreamLine = { id: this.id, end: { code, message, hint } };
    if (this.socket.writable) this.socket.end(`${JSON.stringify(line)}\n`);
  }

  /** The queue went back under its bound: the stall clock stops, and what was dropped is told (`lagged`). */
  private caughtUp(): void {
    this.stalledSince = 0;
    if (this.dropped === 0 || this.ended) return;
    this.stats.laggedMarkers++;
    this.socket.write(`${this.prefix}${JSON.stringify({ type: 'lagged', at: this.now(), dropped: this.dropped })}}\n`);
    this.dropped = 0;
  }

  private endSlow(): void {
    this.stats.slowClosed++;
    this.end('EVENTS_TOO_SLOW', `this event subscriber read nothing for ${MAX_STREAM_STALL_MS / 1000} s and was closed`,
      'read events as they come (hand slow work to a queue of your own), then subscribe again');
    // The end line sits behind a full queue: give it a moment, then free the connection.
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }
}
