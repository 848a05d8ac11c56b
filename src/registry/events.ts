import type { ServerResponse } from 'node:http';
import { SSE_KEEPALIVE_MS, type AgentView, type ChangeKind } from './protocol.js';

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

  /** Turns `res` into an event stream for `network`, starting with the snapshot. */
  subscribe(network: string, res: ServerResponse, snapshot: AgentView[]): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
    });
    res.socket?.setNoDelay(true);
    res.write(frame('snapshot', { agents: snapshot }));
    let set = this.subscribers.get(network);
    if (!set) this.subscribers.set(network, (set = new Set()));
    set.add(res);
    res.on('close', () => {
      set.delete(res);
      if (set.size === 0 && this.subscribers.get(network) === set) this.subscribers.delete(network);
    });
  }

  publish(network: string, kind: ChangeKind, agent: AgentView): void {
    const set = this.subscribers.get(network);
    if (!set) return;
    const text = frame(kind, { agent });
    for (const res of set) send(res, text);
  }

  private broadcast(text: string): void {
    for (const set of this.subscribers.values()) for (const res of set) send(res, text);
  }
}

function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function send(res: ServerResponse, text: string): void {
  if (res.writableLength > MAX_QUEUED_BYTES) res.destroy();
  else res.write(text);
}
