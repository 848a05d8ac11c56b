import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { SSE_KEEPALIVE_MS, type AgentChangeKind, type AgentView } from './protocol.js';
import { StreamHistory } from './stream-history.js';
import { DIGEST_BUCKETS, ViewDigest, decodeViewDigest } from './view-digest.js';

/**
 * The registry's push stream (Server-Sent Events, text/event-stream), one per subscriber:
 *
 * | event      | data (one line of JSON)           | when                                      |
 * | ---------- | --------------------------------- | ----------------------------------------- |
 * | snapshot   | {"agents": [AgentView, ...],      | first, once: every agent of the network,  |
 * |            |  "policy": PolicyView | null}     | and the network's policy (null: none)     |
 * | upsert     | {"agent": AgentView}              | an agent published a new record; or, after |
 * |            |                                   | the snapshot, one that changed while it   |
 * |            |                                   | was sent (its current view)               |
 * | online     | {"agent": AgentView}              | an agent was heard from again             |
 * | offline    | {"agent": AgentView}              | an agent left or went silent              |
 * | removed    | {"id": agent ID}                  | an operator removed or blocked an agent   |
 * | policy     | PolicyView {"version", "policy"}  | an operator set a new policy              |
 * | resumed    | {} (by digest: {"buckets": N})    | first, instead of the snapshot, when the  |
 * |            |                                   | reader's Last-Event-ID is still good, or  |
 * |            |                                   | its view digest differs in few buckets    |
 * | bucket     | {"bucket": B, "ids": [ID, ...]}   | after a resume by digest, for each bucket |
 * |            |                                   | that differs: the IDs it holds now (drop  |
 * |            |                                   | the others); their views follow           |
 * | (comment)  | ": keep-alive" (with an `id:`)    | every SSE_KEEPALIVE_MS, when nothing waits |
 *
 * Memory per subscriber is bounded whatever it does, and a slow reader loses nothing. The snapshot
 * is written a chunk at a time, each when the one before has been taken by the network; it walks
 * the network's live agent map, so it costs no copy of the fleet. The hub stamps every agent
 * change with a sequence number (per network). Changes are written as they come while the socket
 * takes them; while a snapshot is being written, or once MAX_UNSENT_CHARS wait unsent, the
 * subscriber is "behind": its agent changes are not queued at all, and when the socket drains a
 * catch-up pass over the same map sends, as `upsert`, the current view of each agent changed
 * since. So a fleet-wide wave (every agent going offline at once) ends in one view per agent,
 * however big the fleet. Removals and policies made while it is behind wait in order (the agent
 * is gone from the map), up to MAX_UNSENT_CHARS more: a stream holds at most ~2 MiB. A subscriber
 * is dropped only when those pass the bound, or when nothing is taken for a whole keep-alive
 * period while bytes wait: it reconnects, and resumes where it can (below). Streams are
 * capped per credential (an agent, a join token) and in total; a credential that stops being
 * valid loses its streams.
 *
 * Resuming: when a subscriber turns live, and with each keep-alive, it is sent an SSE `id:` (this
 * hub's epoch, the network's sequence number, and a MAC binding both to its credential, and an
 * agent's to its membership): everything up to that number has been sent. A reader that
 * reconnects with that Last-Event-ID, to the same registry process and with the same credential
 * (an agent not removed and admitted again meanwhile), gets `resumed`, the removals and the
 * policy it missed, and one catch-up pass of the agents changed since (at most a keep-alive
 * period's worth more than it needed), instead of the whole fleet again. stream-history.ts keeps
 * the last 4,096 removals; past that, from another process or instance, or with a point not
 * given to this credential, it gets a snapshot, unless it resumes by digest.
 *
 * Resuming by digest (view-digest.ts): a reader may also send the digest of the views it holds,
 * by bucket. When its point is not this hub's (the registry restarted, another instance), and
 * at most half the buckets differ, it gets `resumed`, a `bucket` frame for each bucket that
 * differs, the policy, and a pass of those buckets' agents (as upserts), instead of the whole
 * fleet. What it holds is all it shows, so it learns no more than a snapshot would tell it. The
 * hub builds a network's digest on the first such resume and keeps it with every change after.
 */

/** A snapshot or catch-up pass is written in pieces of about this many characters (Node's stream buffer is 16 KiB). */
const SNAPSHOT_CHUNK_CHARS = 16 * 1024;
/** How long a closed stream may take to flush its last events before it is destroyed. */
const CLOSE_GRACE_MS = 1_000;
/**
 * A subscriber may have this much written but not yet taken by the network (beyond what the
 * kernel's socket buffers hold) before it is behind: a burst of ~1,000 record changes. Also the
 * bound on removals and policies waiting while it is behind.
 */
const MAX_UNSENT_CHARS = 1024 * 1024;

/** Something whose current view can be sent: a fleet-state Entry. */
export interface Viewable {
  readonly json: string;
  readonly view: AgentView;
  /** The hub's sequence number of its latest change (0: none since the registry started). */
  eventSeq: number;
}

export type StreamRefusal = { ok: false; code: 'TOO_MANY_STREAMS' | 'STREAMS_FULL'; message: string };

export type SubscribeResult =
  /**
   * How the stream starts: from the reader's point (what it missed: `changes` since, at most one
   * view each), by the buckets that differ, or a snapshot.
   */
  | { ok: true; from: 'point' | 'buckets' | 'snapshot'; changes: number }
  | StreamRefusal;

export interface StreamStats {
  open: number;
  /** Streams that resumed from a reader's Last-Event-ID instead of starting from a snapshot. */
  resumed: number;
  /** Streams that resumed from a reader's view digest (its point was another process's) instead of a snapshot. */
  digestResumed: number;
  behind: number;
  unsentChars: number;
  refused: number;
  dropped: number;
  caughtUp: number;
}

export interface StreamLimits {
  streams: number;
  streamsPerCredential: number;
}

class Subscriber {
  /** The pass over the network's live agent map being written: the snapshot first, later catch-ups; null when none. */
  pass: Iterator<Viewable> | null;
  inSnapshot = true;
  sentAny = false;
  /** Non-null while behind: agent changes after this sequence number were not written and wait for a catch-up. */
  behindFrom: number | null;
  /** The catch-up pass being written sends agents whose latest change is in (passFrom, passTo]. */
  passFrom = 0;
  passTo = 0;
  /** Removals and policies while behind, as frames, in order. */
  waiting: string[] = [];
  waitingChars = 0;
  /** Writes the network has taken (their callbacks ran): how a stall is told from a slow reader. */
  progress = 0;
  progressAtLastTick = 0;
  expiry: NodeJS.Timeout | undefined;

  /**
   * `agents`: a fresh pass over the network's agents; `tail`: the snapshot's fields after them (read
   * at its end). From `seq` on it is behind: after a snapshot, or (`resumed`) with no snapshot.
   */
  constructor(readonly network: string, readonly credential: string, readonly resumeScope: string, readonly res: ServerResponse,
    readonly agents: () => Iterable<Viewable>, readonly tail: () => string, seq: number, resumed: boolean) {
    this.inSnapshot = !resumed;
    this.pass = resumed ? null : agents()[Symbol.iterator]();
    this.behindFrom = seq;
  }
}

export class EventHub {
  private readonly byNetwork = new Map<string, Set<Subscriber>>();
  private readonly byCredential = new Map<string, Set<Subscriber>>();
  private count = 0;
  private readonly counts = { refused: 0, dropped: 0, caughtUp: 0, resumed: 0, digestResumed: 0 };
  private readonly histories = new Map<string, StreamHistory>();
  /** Per network, once a reader resumed by digest: the digest of the network's views, kept with each change. */
  private readonly digests = new Map<string, ViewDigest>();
  /** Names this hub's sequence numbers: a resume point from another process (or instance) is not ours. */
  private readonly epoch = randomBytes(6).toString('hex');
  /** Authenticates resume points: a reader may resume only from a point given to its own credential. */
  private readonly resumeKey = randomBytes(32);
  private keepAlive: NodeJS.Timeout | undefined;

  /** `keepAliveMs`: also the stall period (shorter in tests). */
  constructor(private readonly limits: StreamLimits, private readonly keepAliveMs = SSE_KEEPALIVE_MS) {}

  start(): void {
    this.keepAlive = setInterval(() => this.tick(), this.keepAliveMs);
    this.keepAlive.unref();
  }

  stop(): void {
    clearInterval(this.keepAlive);
    for (const set of this.byNetwork.values()) for (const s of set) s.res.end();
  }

  /**
   * `behind`: subscribers whose changes wait for a catch-up now; `unsentChars`: what the streams
   * hold written but not yet taken by the network; `caughtUp`: agent views catch-up passes sent.
   */
  stats(): StreamStats {
    let behind = 0;
    let unsentChars = 0;
    for (const set of this.byNetwork.values()) {
      for (const s of set) {
        if (gone(s)) continue; // closing: its 'close' event has not run yet
        if (s.behindFrom !== null && !s.inSnapshot) behind++;
        unsentChars += s.res.writableLength + s.waitingChars;
      }
    }
    return { open: this.count, behind, unsentChars, ...this.counts };
  }

  /**
   * Whether one more stream may be opened, by `credential` (or by anyone: null, checked before
   * the request's signature is); a refusal is counted.
   */
  roomFor(credential: string | null): { ok: true } | StreamRefusal {
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
   * Turns `res` into an event stream for `network`, starting with a snapshot of `agents` (called
   * for each pass over the network's live agents: the snapshot, the catch-up) and the network's
   * policy (`policyJson`: a PolicyView as JSON, or "null"). `credential` names who
   * authorized it ("agent:ID", "token:HASH"); the stream is closed at `expiresAt` (the
   * credential's end) when given. `lastEventId`: the reader's resume point, if it sent one;
   * `resumeScope`: what its points are bound to (the credential, and for an agent its membership).
   * `byDigest`: the reader's view digest (its header), and the network's agent by ID.
   */
  subscribe(network: string, credential: string, res: ServerResponse, agents: () => Iterable<Viewable>, policyJson: () => string, expiresAt: number | null,
    lastEventId?: string, resumeScope = credential, byDigest?: { digest: string | undefined; agent: (id: string) => Viewable | undefined }): SubscribeResult {
    const room = this.roomFor(credential);
    if (!room.ok) return room;
    const history = this.historyOf(network);
    const from = this.resumePoint(lastEventId, resumeScope, network, history);
    const missed = from === null ? null : history.since(from);
    const differing = missed || !byDigest ? null : this.differingBuckets(network, agents, byDigest.digest);
    const s = new Subscriber(network, credential, resumeScope, res, agents, () => `],"policy":${policyJson()}}`, missed ? from! : history.seq, missed !== null || differing !== null);
    this.add(s);
    res.once('close', () => this.remove(s));
    if (expiresAt !== null) this.closeAt(s, expiresAt);
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    res.socket?.setNoDelay(true);
    if (missed) {
      // What it missed: the removals and the policy (now), then a catch-up of the agents changed since.
      this.counts.resumed++;
      this.write(s, frame('resumed', '{}'));
      s.waiting = [...missed.removals, ...(missed.policyChanged ? [frame('policy', policyJson())] : [])];
      s.waitingChars = s.waiting.reduce((n, f) => n + f.length, 0);
    } else if (differing) {
      // The differing buckets' IDs now, then (a pass) their agents as they are, then the policy.
      this.counts.digestResumed++;
      this.write(s, frame('resumed', JSON.stringify({ buckets: differing.length })));
      for (const [b, ids] of differing) this.write(s, frame('bucket', JSON.stringify({ bucket: b, ids })));
      s.waiting = [frame('policy', policyJson())];
      s.waitingChars = s.waiting[0].length;
      [s.passFrom, s.passTo] = [-1, history.seq];
      s.pass = agentsIn(differing.flatMap(([, ids]) => ids), byDigest!.agent);
    } else {
      this.write(s, 'event: snapshot\ndata: {"agents":[');
    }
    this.pump(s);
    return { ok: true, from: missed ? 'point' : differing ? 'buckets' : 'snapshot', changes: missed ? history.seq - from! : 0 };
  }

  /**
   * The sequence number a reconnecting reader's Last-Event-ID names, if this hub gave it to the
   * same scope on this network (so no one learns removals from before they subscribed).
   */
  private resumePoint(lastEventId: string | undefined, scope: string, network: string, history: StreamHistory): number | null {
    const m = lastEventId === undefined ? null : /^([0-9a-f]{12})\.(\d{1,15})\.([0-9a-f]{32})$/.exec(lastEventId);
    if (!m || m[1] !== this.epoch) return null;
    const from = Number(m[2]);
    if (from > history.seq || !timingSafeEqual(Buffer.from(m[3], 'hex'), this.resumeMac(scope, network, from))) return null;
    return from;
  }

  /**
   * The buckets where a reader's digest differs from the network's, with their IDs; null for none
   * sent, a malformed one, more than half, or ID lists past MAX_UNSENT_CHARS (they are written at
   * once, unpaced: a snapshot, paced by the reader, is then the cheaper answer).
   */
  private differingBuckets(network: string, agents: () => Iterable<Viewable>, header: string | undefined): Array<[number, string[]]> | null {
    const theirs = decodeViewDigest(header);
    if (!theirs) return null;
    let digest = this.digests.get(network);
    if (!digest) {
      digest = new ViewDigest();
      for (const a of agents()) digest.set(a.view);
      this.digests.set(network, digest);
    }
    const differing = digest.differing(theirs);
    if (differing.length > DIGEST_BUCKETS / 2) return null;
    const lists = differing.map((b): [number, string[]] => [b, digest.idsIn(b)]);
    const chars = lists.reduce((n, [, ids]) => n + ids.reduce((m, id) => m + id.length + 3, 0), 0);
    return chars <= MAX_UNSENT_CHARS ? lists : null;
  }

  private resumeMac(scope: string, network: string, seq: number): Buffer {
    return createHmac('sha256', this.resumeKey).update(`${scope}\n${network}\n${seq}`).digest().subarray(0, 16);
  }

  private historyOf(network: string): StreamHistory {
    let h = this.histories.get(network);
    if (!h) this.histories.set(network, (h = new StreamHistory()));
    return h;
  }

  /**
   * Marks the live subscriber's current sequence number as a point it may resume from: every
   * change up to it has been written. Sent when it turns live and with each keep-alive.
   */
  private writeResumePoint(s: Subscriber, comment = ''): void {
    const seq = this.historyOf(s.network).seq;
    this.write(s, `id: ${this.epoch}.${seq}.${this.resumeMac(s.resumeScope, s.network, seq).toString('hex')}\n${comment}\n`);
  }

  /** Sends an agent's change to the network's subscribers; one that is behind gets it from its catch-up. */
  publish(network: string, kind: AgentChangeKind, agent: Viewable): void {
    const seq = this.historyOf(network).changed();
    agent.eventSeq = seq;
    this.digests.get(network)?.set(agent.view);
    const set = this.byNetwork.get(network);
    if (!set) return;
    const text = frame(kind, `{"agent":${agent.json}}`);
    for (const s of set) if (s.behindFrom === null && !gone(s) && !this.fallsBehind(s, text, seq - 1)) this.write(s, text);
  }

  /** An agent left the network for good: peers drop it. */
  publishRemoved(network: string, id: string): void {
    const text = frame('removed', JSON.stringify({ id }));
    this.digests.get(network)?.delete(id);
    this.publishInOrder(network, this.historyOf(network).removed(text), text, false);
  }

  /** A new policy (`policyJson`: a PolicyView as JSON); a snapshot still being written ends with it anyway. */
  publishPolicy(network: string, policyJson: string): void {
    this.publishInOrder(network, this.historyOf(network).policyChanged(), frame('policy', policyJson), true);
  }

  /** A frame that no pass over the agent map can stand for (change `seq`): written, or kept in order while behind. */
  private publishInOrder(network: string, seq: number, text: string, snapshotCovers: boolean): void {
    for (const s of this.byNetwork.get(network) ?? []) {
      if (gone(s) || (snapshotCovers && s.inSnapshot)) continue;
      if (s.behindFrom === null && !this.fallsBehind(s, text, seq)) {
        this.write(s, text);
        continue;
      }
      s.waiting.push(text);
      s.waitingChars += text.length;
      if (s.waitingChars > MAX_UNSENT_CHARS) this.drop(s);
    }
  }

  /** Whether `text` would pass a live subscriber's bound: if so it is behind from `seq` on, until the socket drains. */
  private fallsBehind(s: Subscriber, text: string, seq: number): boolean {
    if (s.res.writableLength + text.length <= MAX_UNSENT_CHARS) return false;
    s.behindFrom = seq;
    // 'drain' comes only after a write was refused; a frame alone past the bound (none is today) must not wait forever.
    if (s.res.writableNeedDrain) s.res.once('drain', () => this.pump(s));
    else setImmediate(() => this.pump(s));
    return true;
  }

  /** Closes every stream a credential opened (a join token that was just used up, a removed agent). */
  closeCredential(credential: string): void {
    // Ended, not destroyed, so what was just sent (a removed agent learns of its own removal)
    // still goes out; a stream that does not take it is destroyed a moment later.
    for (const s of this.byCredential.get(credential) ?? []) {
      if (!s.inSnapshot) this.flushWaiting(s); // a removed agent that was behind still learns of its removal
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

  /**
   * Writes the pass under way a chunk at a time while the socket takes them; after it, what
   * waited, then a catch-up pass for changes made meanwhile, until none is left and the
   * subscriber is live again.
   */
  private pump(s: Subscriber): void {
    while (!gone(s)) {
      if (s.pass) {
        const { text, done } = s.inSnapshot ? this.snapshotChunk(s, s.pass) : this.catchUpChunk(s, s.pass);
        if (!done) {
          if (!this.write(s, text)) return void s.res.once('drain', () => this.pump(s));
          continue;
        }
        this.write(s, s.inSnapshot ? `${text}${s.tail()}\n\n` : text);
        s.inSnapshot = false;
        s.pass = null;
      }
      this.flushWaiting(s);
      if (s.behindFrom === null) return;
      const seq = this.historyOf(s.network).seq;
      if (s.behindFrom === seq) {
        s.behindFrom = null; // caught up: live again, and the reader may resume from here
        this.writeResumePoint(s);
        return;
      }
      [s.passFrom, s.passTo, s.behindFrom] = [s.behindFrom, seq, seq];
      s.pass = s.agents()[Symbol.iterator]();
    }
  }

  /** Writes the removals and policies that waited, in order (each frame stays one string shared by every subscriber). */
  private flushWaiting(s: Subscriber): void {
    if (s.waiting.length === 0) return;
    s.res.cork();
    for (const text of s.waiting) this.write(s, text);
    s.res.uncork();
    s.waiting = [];
    s.waitingChars = 0;
  }

  /** The next piece of the snapshot's agent array. */
  private snapshotChunk(s: Subscriber, pass: Iterator<Viewable>): { text: string; done: boolean } {
    const parts: string[] = [];
    let chars = 0;
    let done = false;
    while (chars < SNAPSHOT_CHUNK_CHARS) {
      const next = pass.next();
      if (next.done) {
        done = true;
        break;
      }
      parts.push(next.value.json);
      chars += next.value.json.length;
    }
    const text = (s.sentAny && parts.length ? ',' : '') + parts.join(',');
    s.sentAny ||= parts.length > 0;
    return { text, done };
  }

  /** The next catch-up frames: agents whose latest change is in the pass's range (a later one waits for the next pass). */
  private catchUpChunk(s: Subscriber, pass: Iterator<Viewable>): { text: string; done: boolean } {
    let text = '';
    for (;;) {
      if (text.length >= SNAPSHOT_CHUNK_CHARS) return { text, done: false };
      const next = pass.next();
      if (next.done) return { text, done: true };
      const seq = next.value.eventSeq;
      if (seq <= s.passFrom || seq > s.passTo) continue;
      text += frame('upsert', `{"agent":${next.value.json}}`);
      this.counts.caughtUp++;
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
        else if (s.behindFrom === null && s.res.writableLength === 0) this.writeResumePoint(s, ': keep-alive\n');
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

/** The agents with these IDs that are still there. */
function* agentsIn(ids: string[], agent: (id: string) => Viewable | undefined): Iterator<Viewable> {
  for (const id of ids) {
    const a = agent(id);
    if (a) yield a;
  }
}

/** One SSE event; `json` has no newline (JSON.stringify never emits one), so it fits one data line. */
function frame(event: string, json: string): string {
  return `event: ${event}\ndata: ${json}\n\n`;
}
