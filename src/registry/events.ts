import type { ServerResponse } from 'node:http';
import { SSE_KEEPALIVE_MS, type ChangeKind } from './protocol.js';

/**
 * A subscriber that falls this far behind (bytes queued, not yet taken by the network) is
 * dropped; it reconnects and starts again from a fresh snapshot instead of growing our memory.
 */
const MAX_QUEUED_BYTES = 32 * 1024 * 1024;

/** The registry's push stream (Server-Sent Events): a snapshot per subscriber, then every change. */
export class EventHub {
  private readonly subscribers = new Map<string, Set<ServerResponse>>();
  private keepAlive: NodeJS.Timeout | undefined;

  start(): void {
    this.keepAlive = setInterval(() => this.broadcast(': keep-alive\n\n'), SSE_KEEPALIVE_MS);
    this.keepAlive.unref();
  }

  stop(): void {
    clearInterval(this.keepAlive);
    for (const set of this.subscribers.values()) for (const res of set) res.end();
    this.subscribers.clear();
  }

  get size(): number {
    let n = 0;
    for (const set of this.subscribers.values()) n += set.size;
    return n;
  }

  /** Turns `res` into an event stream for `network`, starting with the snapshot (each agent view as JSON text). */
  subscribe(network: string, res: ServerResponse, snapshot: string[]): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
    });
    res.socket?.setNoDelay(true);
    res.write(frame('snapshot', `{"agents":[${snapshot.join(',')}]}`));
    let set = this.subscribers.get(network);
    if (!set) this.subscribers.set(network, (set = new Set()));
    set.add(res);
    res.on('close', () => {
      set.delete(res);
      if (set.size === 0 && this.subscribers.get(network) === set) this.subscribers.delete(network);
    });
  }

  /** Sends a change to the network's subscribers; `agent` is the agent view as JSON text. */
  publish(network: string, kind: ChangeKind, agent: string): void {
    const set = this.subscribers.get(network);
    if (!set) return;
    const text = frame(kind, `{"agent":${agent}}`);
    for (const res of set) send(res, text);
  }

  private broadcast(text: string): void {
    for (const set of this.subscribers.values()) for (const res of set) send(res, text);
  }
}

/** One SSE event; `json` has no newline (JSON.stringify never emits one), so it fits one data line. */
function frame(event: string, json: string): string {
  return `event: ${event}\ndata: ${json}\n\n`;
}

function send(res: ServerResponse, text: string): void {
  if (res.writableLength > MAX_QUEUED_BYTES) res.destroy();
  else res.write(text);
}
