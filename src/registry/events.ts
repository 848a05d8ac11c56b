import type { ServerResponse } from 'node:http';
import { SSE_KEEPALIVE_MS, type AgentChangeKind } from './protocol.js';

/**
 * The registry's push stream (Server-Sent Events, text/event-stream), one per subscriber:
 *
 * | event      | data (one line of JSON)           | when                                      |
 * | ---------- | --------------------------------- | ----------------------------------------- |
 * | snapshot   | {"agents": [AgentView, ...],      | first, once: every agent of the network,  |
 * |            |  "policy": PolicyView | null}     | and the network's policy (null: none)     |
 * | upsert     | {"agent": AgentView}              | an agent published a new record           |
 * | online     | {"agent": AgentView}              | an agent was heard from again             |
 * | offline    | {"agent": AgentView}              | an agent left or went silent              |
 * | removed    | {"id": agent ID}                  | an operator removed or blocked an agent   |
 * | policy     | PolicyView {"version", "policy"}  | an operator set a new policy              |
 * | (comment)  | ": keep-alive"                    | every SSE_KEEPALIVE_MS                    |
 *
 * Memory per subscriber is bounded whatever it does. The snapshot is written a chunk at a time,
 * each when the one before has been taken by the network (never as one string per subscriber);
 * it walks the network's live agent map, so it costs no copy of the fleet. Changes wait behind
 * it, and later sit in the socket's queue, up to MAX_UNSENT_CHARS; past that, or when nothing
 * is taken for a whole keep-alive period while bytes wait, the subscriber is dropped: it
 * reconnects and starts again from a fresh snapshot. Streams are capped per credential (an
 * agent, a join token) and in total; a credential that stops being valid loses its streams.
 */

/** A snapshot is written in pieces of about this many characters (Node's stream buffer is 16 KiB). */
const SNAPSHOT_CHUNK_CHARS = 16 * 1024;
/** How long a closed stream may take to flush its last events before it is destroyed. */
const CLOSE_GRACE_MS = 1_000;
/**
 * A subscriber may have this much not yet taken by the network (in our queue, beyond what the
 * kernel's socket buffers hold): a burst of ~1,000 record changes. Queued frames are strings
 * shared by every subscriber, so what this costs in memory is mostly references.
 */
const MAX_UNSENT_CHARS = 1024 * 1024;

/** Something whose current view can be sent: a fleet-state Entry. */
export interface Viewable {
  readonly json: string;
}

export type SubscribeResult =
  | { ok: true }
  | { ok: false; code: 'TOO_MANY_STREAMS' | 'STREAMS_FULL'; message: string };

export interface StreamLimits {
  streams: number;
  streamsPerCredential: number;
}

class Subscriber {
  /** The snapshot still to send (a live iterator over the network's agents), or null once sent. */
  snapshot: Iterator<Viewable> | null;
  sentAny = false;
  /** Frames waiting behind the snapshot. */
  pending: string[] = [];
  pendingChars = 0;
  /** Writes the network has taken (their callbacks ran): how a stall is told from a slow reader. */
  progress = 0;
  progressAtLastTick = 0;
  expiry: NodeJS.Timeout | undefined;

  /** `tail`: the snapshot's fields after the agents (read when the last agent has been written). */
  constructor(readonly network: string, readonly credential: string, readonly res: ServerResponse, snapshot: Iterator<Viewable>, readonly tail: () => string) {
    this.snapshot = snapshot;
  }
}

export class EventHub {
  private readonly byNetwork = new Map<string, Set<Subscriber>>();
  private readonly byCredential = new Map<string, Set<Subscriber>>();
  private count = 0;
  private readonly counts = { refused: 0, dropped: 0 };
  private keepAlive: NodeJS.Timeout | undefined;

  constructor(private readonly limits: StreamLimits) {}

  start(): void {
    this.keepAlive = setInterval(() => this.tick(), SSE_KEEPALIVE_MS);
    this.keepAlive.unref();
  }

  stop(): void {
    clearInterval(this.keepAlive);
    for (const set of this.byNetwork.values()) for (const s of set) s.res.end();
  }

  stats(): { open: number; refused: number; dropped: number } {
    return { open: this.count, ...this.counts };
  }

  /**
   * Whether one more stream may be opened, by `credential` (or by anyone: null, checked before
   * the request's signature is); a refusal is counted.
   */
  roomFor(credential: string | null): SubscribeResult {
    if (this.count >= this.limits.streams) {
      this.counts.refused++;
      return { ok: false, code: 'STREAMS_FULL', message: `the registry already serves its maximum of ${this.limits.streams} event streams` };
    }
    if (credential !== null && (this.byCredential.get(credential)?.size ?? 0) >= this.limits.streamsPerCredential) {
      this.counts.refused++;
      return { ok: false, code: 'TOO_MANY_STREAMS', message: `this credential already holds ${this.limits.streamsPerCredential} event streams` };
    }
    return { ok: true };
  }

  /**
   * Turns `res` into an event stream for `network`, starting with a snapshot of `agents` and
   * the network's policy (`policyJson`: a PolicyView as JSON, or "null"). `credential` names who
   * authorized it ("agent:ID", "token:HASH"); the stream is closed at `expiresAt` (the
   * credential's end) when given.
   */
  subscribe(network: string, credential: string, res: ServerResponse, agents: Iterable<Viewable>, policyJson: () => string, expiresAt: number | null): SubscribeResult {
    const room = this.roomFor(credential);
    if (!room.ok) return room;
    const s = new Subscriber(network, credential, res, agents[Symbol.iterator](), () => `],"policy":${policyJson()}}`);
    this.add(s);
    res.once('close', () => this.remove(s));
    if (expiresAt !== null) this.closeAt(s, expiresAt);
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    res.socket?.setNoDelay(true);
    this.write(s, 'event: snapshot\ndata: {"agents":[');
    this.pump(s);
    return { ok: true };
  }

  /** Sends a change to the network's subscribers; `agent` is the agent view as JSON text. */
  publish(network: string, kind: AgentChangeKind, agent: string): void {
    this.publishEvent(network, kind, `{"agent":${agent}}`);
  }

  /** An agent left the network for good: peers drop it. */
  publishRemoved(network: string, id: string): void {
    this.publishEvent(network, 'removed', JSON.stringify({ id }));
  }

  /** A new policy (`policyJson`: a PolicyView as JSON). */
  publishPolicy(network: string, policyJson: string): void {
    this.publishEvent(network, 'policy', policyJson);
  }

  private publishEvent(network: string, event: string, data: string): void {
    const set = this.byNetwork.get(network);
    if (!set) return;
    const text = frame(event, data);
    for (const s of set) this.send(s, text);
  }

  /** Closes every stream a credential opened (a join token that was just used up, a removed agent). */
  closeCredential(credential: string): void {
    // Ended, not destroyed, so what was just sent (a removed agent learns of its own removal)
    // still goes out; a stream that does not take it is destroyed a moment later.
    for (const s of this.byCredential.get(credential) ?? []) {
      s.res.end();
      setTimeout(() => s.res.destroy(), CLOSE_GRACE_MS).unref();
    }
  }

  private add(s: Subscriber): void {
    setOf(this.byNetwork, s.network).add(s);
    setOf(this.byCredential, s.credential).add(s);
    this.count++;
  }

  private remove(s: Subscriber): void {
    clearTimeout(s.expiry);
    if (!this.byNetwork.get(s.network)?.has(s)) return;
    this.count--;
    for (const [map, key] of [[this.byNetwork, s.network], [this.byCredential, s.credential]] as const) {
      const set = map.get(key)!;
      set.delete(s);
      if (set.size === 0) map.delete(key);
    }
  }

  /** Writes the next snapshot pieces while the socket takes them; then what waited behind. */
  private pump(s: Subscriber): void {
    while (s.snapshot && !gone(s)) {
      const parts: string[] = [];
      let chars = 0;
      let done = false;
      while (chars < SNAPSHOT_CHUNK_CHARS) {
        const next = s.snapshot.next();
        if (next.done) {
          done = true;
          break;
        }
        parts.push(next.value.json);
        chars += next.value.json.length;
      }
      const text = (s.sentAny && parts.length ? ',' : '') + parts.join(',');
      s.sentAny ||= parts.length > 0;
      if (!done) {
        if (!this.write(s, text)) return void s.res.once('drain', () => this.pump(s));
        continue;
      }
      s.snapshot = null;
      this.write(s, `${text}${s.tail()}\n\n${s.pending.join('')}`);
      s.pending = [];
      s.pendingChars = 0;
    }
  }

  private send(s: Subscriber, text: string): void {
    if (gone(s)) return;
    if (s.snapshot) {
      s.pending.push(text);
      s.pendingChars += text.length;
      if (s.pendingChars > MAX_UNSENT_CHARS) this.drop(s);
    } else if (s.res.writableLength + text.length > MAX_UNSENT_CHARS) {
      this.drop(s);
    } else {
      this.write(s, text);
    }
  }

  private write(s: Subscriber, text: string): boolean {
    return s.res.write(text, () => s.progress++);
  }

  private drop(s: Subscriber): void {
    if (gone(s)) return;
    this.counts.dropped++;
    s.res.destroy();
  }

  private closeAt(s: Subscriber, at: number): void {
    // setTimeout takes at most ~24.8 days: re-arm until the time comes.
    const wait = Math.min(at - Date.now(), 2 ** 31 - 1);
    s.expiry = setTimeout(() => (Date.now() >= at ? s.res.destroy() : this.closeAt(s, at)), Math.max(0, wait));
    s.expiry.unref();
  }

  /** Keep-alives; and a subscriber with bytes waiting that took none for a whole period is dropped. */
  private tick(): void {
    for (const set of this.byNetwork.values()) {
      for (const s of set) {
        const stalled = s.res.writableLength > 0 && s.progress === s.progressAtLastTick;
        s.progressAtLastTick = s.progress;
        if (stalled) this.drop(s);
        else if (!s.snapshot) this.send(s, ': keep-alive\n\n');
      }
    }
  }
}

/** Closed, or closing (its 'close' event, which forgets it, may not have run yet). */
function gone(s: Subscriber): boolean {
  return s.res.destroyed || s.res.writableEnded;
}

function setOf(map: Map<string, Set<Subscriber>>, key: string): Set<Subscriber> {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  return set;
}

/** One SSE event; `json` has no newline (JSON.stringify never emits one), so it fits one data line. */
function frame(event: string, json: string): string {
  return `event: ${event}\ndata: ${json}\n\n`;
}
