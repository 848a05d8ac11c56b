import { randomInt } from 'node:crypto';
import { ENDPOINT_SIZE, makeEndpoint, endpointAddress } from '../net/endpoint.js';
import { monotonicMs, TokenBucket } from '../util/token-bucket.js';
import { birthday as B } from './constants.js';

/**
 * Birthday-paradox probing: a direct path to a peer behind an endpoint-dependent ("symmetric")
 * NAT, which picks a new public port for every destination, so the port STUN saw is useless to
 * anyone else. The idea is the one Tailscale describes in "How NAT traversal works":
 *
 * - the hard side (our NAT is symmetric) opens `B.sockets` extra UDP sockets and pings the easy
 *   side's public endpoint from each: its NAT now holds that many mappings towards the peer, at
 *   ports nobody knows;
 * - the easy side (endpoint-independent mapping, e.g. a port-restricted NAT) pings random ports
 *   of the hard side's public address from its usual socket: each ping opens its own filter for
 *   that port, and one that lands on a port the hard side opened passes both NATs. With 256
 *   mappings among ~64,500 ports, 1,024 random probes hit one with probability 1 - e^-4 ≈ 98 %.
 *
 * The disco pings and pongs themselves (sealed, replay-checked, budgeted) stay the socket layer's
 * (magicsock.ts): this file only decides who is probed from where and when, within budgets:
 * one token bucket for every probe we send (all peers, both roles), probes and time per attempt,
 * concurrent attempts per role, and a per-peer back-off after an attempt that found nothing.
 * When a probe gets through, the hard side keeps the one socket it came in on (the path's
 * WireGuard goes through it from then on) and closes the others.
 */

/** One of the extra UDP sockets of a hard-side attempt (the daemon's: native udpOpen on port 0, with its own reader). */
export interface ProbeSocket {
  send(slab: Buffer, offsets: Int32Array, lens: Int32Array, addrs: Buffer, count: number): number;
  close(): void;
  /** It now carries a peer's traffic: read it as the main socket is read (full-size batches). */
  keep?(): void;
}

/** What the socket's reader hands over: a batch, slot i at i * slot, its source at addrs[i * 20]. */
export type ProbeReceive = (sock: ProbeSocket, slab: Buffer, slot: number, lens: Int32Array, addrs: Buffer, count: number) => void;

export interface ProbeSocketFactory {
  /** A new socket whose datagrams go to `receive`; null when none can be opened (fd limit). */
  open(receive: ProbeReceive): ProbeSocket | null;
}

export interface BirthdayHooks<P> {
  /** Sends one disco ping to `to` (20-byte endpoint) from `via` (null: our main socket). */
  ping(peer: P, to: Buffer, via: ProbeSocket | null): void;
  /** The reader of the extra sockets (the socket layer's receive path). */
  receive: ProbeReceive;
}

type Role = 'hard' | 'easy';

interface Attempt {
  role: Role;
  startedAt: number;
  /** Probes sent so far (at most B.maxProbesPerAttempt). */
  sent: number;
  /** Hard: the easy side's public endpoint. Easy: the hard side's public endpoint (its port is ignored). */
  target: Buffer;
  /** Hard: the extra sockets, each pinged from once per round. */
  sockets: ProbeSocket[];
  round: number;
  /** Hard: next socket to ping from in this round. */
  cursor: number;
  nextRoundAt: number;
}

interface PeerState<P> {
  peer: P;
  attempt: Attempt | null;
  /** The extra socket a direct path found by the hard role goes through. */
  kept: ProbeSocket | null;
  /** Attempts that found nothing, in a row (the back-off doubles with each). */
  failures: number;
  /** No new attempt for this peer before this. */
  notBefore: number;
  /** Hard side: when we last asked the peer to take part (its answer must follow soon). */
  askedAt: number;
}

export interface BirthdayStats {
  attempts: number;
  successes: number;
  givenUp: number;
  probesSent: number;
  /** Probes that waited for the total budget (sent later or not at all). */
  probesDeferred: number;
  /** Requests refused: back-off, too many attempts, an address not the peer's own, sockets unavailable. */
  refused: number;
  socketsOpen: number;
}

export class BirthdayProber<P extends object> {
  private readonly peers = new Map<P, PeerState<P>>();
  private readonly budget: TokenBucket;
  private openSockets = 0;
  private factory: ProbeSocketFactory | null = null;
  readonly stats: BirthdayStats = { attempts: 0, successes: 0, givenUp: 0, probesSent: 0, probesDeferred: 0, refused: 0, socketsOpen: 0 };

  constructor(private readonly hooks: BirthdayHooks<P>, private readonly clock: () => number = monotonicMs) {
    this.budget = new TokenBucket(B.probesPerSecond, B.probeBurst, clock());
  }

  /** Without a factory we never take the hard role (tests, or a daemon that cannot open sockets). */
  setSocketFactory(factory: ProbeSocketFactory | null): void {
    this.factory = factory;
  }

  private state(peer: P): PeerState<P> {
    let s = this.peers.get(peer);
    if (!s) this.peers.set(peer, (s = { peer, attempt: null, kept: null, failures: 0, notBefore: -Infinity, askedAt: -Infinity }));
    return s;
  }

  /** Attempts under way, by role (kept as counts: a fleet's every peer may have a state here). */
  private readonly runningCount: Record<Role, number> = { hard: 0, easy: 0 };

  private running(role: Role): number {
    return this.runningCount[role];
  }

  /** Ends the peer's attempt, if any, and returns it. */
  private end(s: PeerState<P>): Attempt | null {
    const a = s.attempt;
    if (a) this.runningCount[a.role]--;
    s.attempt = null;
    return a;
  }

  /** Whether an attempt with this peer could start now in this role (back-off, concurrency, sockets). */
  canStart(peer: P, role: Role): boolean {
    const s = this.peers.get(peer);
    if (s?.attempt || (s && this.clock() < s.notBefore)) return false;
    if (role === 'hard') return this.factory !== null && this.running('hard') < B.maxHardAttempts && this.openSockets + B.sockets <= B.maxOpenSockets;
    return this.running('easy') < B.maxEasyAttempts;
  }

  /**
   * Hard side: we are about to ask the peer (through the relay) to take part. Counts as the start
   * of the back-off window, so a peer that never answers (its NAT is hard too) is asked rarely.
   */
  noteAsked(peer: P): void {
    const s = this.state(peer);
    s.askedAt = this.clock();
    s.notBefore = s.askedAt + this.backoff(s.failures);
    s.failures++; // until an attempt finds a path
  }

  /**
   * Easy side: we refused the peer's request (the relay did not confirm its address). It waits out
   * a back-off, as after a failed attempt, before its next request costs us a relay query: the
   * relay answers few a second for all our peers together.
   */
  noteRefused(peer: P): void {
    const s = this.state(peer);
    s.notBefore = this.clock() + this.backoff(s.failures);
    s.failures++;
  }

  /** Whether we asked this peer recently: only then is its answer a reason to open sockets. */
  askedRecently(peer: P): boolean {
    const s = this.peers.get(peer);
    return !!s && this.clock() - s.askedAt <= B.answerWithinMs && !s.attempt;
  }

  /** Hard side: opens the sockets and starts pinging `target` (the easy side's public endpoint) from all of them. */
  startHard(peer: P, target: Buffer): boolean {
    const s = this.state(peer);
    if (s.attempt || !this.factory || this.running('hard') >= B.maxHardAttempts || this.openSockets + B.sockets > B.maxOpenSockets) {
      this.stats.refused++;
      return false;
    }
    const sockets: ProbeSocket[] = [];
    for (let i = 0; i < B.sockets; i++) {
      const sock = this.factory.open(this.hooks.receive);
      if (!sock) break;
      sockets.push(sock);
    }
    this.openSockets += sockets.length;
    this.stats.socketsOpen = this.openSockets;
    if (sockets.length < B.minSockets) {
      this.closeAll(sockets);
      this.stats.refused++;
      return false;
    }
    this.begin(s, { role: 'hard', startedAt: this.clock(), sent: 0, target: Buffer.from(target.subarray(0, ENDPOINT_SIZE)), sockets, round: 0, cursor: 0, nextRoundAt: this.clock() });
    return true;
  }

  /** Easy side: starts pinging random ports of `target`'s address (the hard side's public endpoint), after a short delay. */
  startEasy(peer: P, target: Buffer): boolean {
    const s = this.state(peer);
    if (!this.canStart(peer, 'easy')) {
      this.stats.refused++;
      return false;
    }
    const now = this.clock();
    this.begin(s, { role: 'easy', startedAt: now, sent: 0, target: Buffer.from(target.subarray(0, ENDPOINT_SIZE)), sockets: [], round: 0, cursor: 0, nextRoundAt: now + B.easyDelayMs });
    return true;
  }

  private begin(s: PeerState<P>, attempt: Attempt): void {
    s.attempt = attempt;
    this.runningCount[attempt.role]++;
    s.notBefore = Infinity; // until it ends
    this.stats.attempts++;
  }

  /** Sends what the budgets allow; ends attempts past their time (answers to the last probes may still come until then). Call every tick. */
  tick(): void {
    const now = this.clock();
    for (const s of this.peers.values()) {
      const a = s.attempt;
      if (!a) continue;
      if (now - a.startedAt >= B.attemptMs) {
        this.giveUp(s, now);
        continue;
      }
      const done = a.sent >= B.maxProbesPerAttempt || (a.role === 'hard' && a.round >= B.hardRounds);
      if (done || now < a.nextRoundAt) continue;
      if (a.role === 'hard') this.sendHard(s.peer, a, now);
      else this.sendEasy(s.peer, a);
    }
  }

  private take(): boolean {
    if (this.budget.take(1, this.clock())) return true;
    this.stats.probesDeferred++;
    return false;
  }

  private sendHard(peer: P, a: Attempt, now: number): void {
    while (a.cursor < a.sockets.length && a.sent < B.maxProbesPerAttempt) {
      if (!this.take()) return;
      this.hooks.ping(peer, a.target, a.sockets[a.cursor++]);
      a.sent++;
      this.stats.probesSent++;
    }
    a.round++;
    a.cursor = 0;
    a.nextRoundAt = now + B.hardRoundIntervalMs;
  }

  private sendEasy(peer: P, a: Attempt): void {
    const address = endpointAddress(a.target);
    while (a.sent < B.maxProbesPerAttempt) {
      if (!this.take()) return;
      this.hooks.ping(peer, makeEndpoint(address, randomInt(B.minPort, 65536)), null);
      a.sent++;
      this.stats.probesSent++;
    }
  }

  private giveUp(s: PeerState<P>, now: number): void {
    const a = this.end(s)!;
    this.closeAll(a.sockets);
    // The hard side counted this attempt when it asked (noteAsked).
    s.notBefore = now + this.backoff(s.failures);
    if (a.role === 'easy') s.failures++;
    this.stats.givenUp++;
  }

  private backoff(failures: number): number {
    return Math.min(B.backoffMaxMs, B.backoffFirstMs * 2 ** Math.min(failures, 16));
  }

  /**
   * The path to the peer went direct, through `via` (one of this peer's extra sockets) or through
   * the main socket (null). The attempt ends; the socket the path uses is kept, the others close.
   */
  succeeded(peer: P, via: ProbeSocket | null): void {
    const s = this.peers.get(peer);
    if (!s) return;
    const a = s.attempt;
    const keep = a !== null && via !== null && a.sockets.includes(via);
    if (a) {
      this.closeAll(a.sockets.filter((x) => x !== via));
      this.end(s);
      this.stats.successes++;
    }
    if (s.kept && s.kept !== via) this.closeAll([s.kept]);
    if (s.kept !== via) {
      s.kept = keep ? via : null;
      s.kept?.keep?.();
    }
    s.failures = 0;
    s.notBefore = this.clock() + B.backoffFirstMs;
  }

  /** Whether `sock` is one of this peer's: in its running attempt, or the one its direct path uses. */
  owns(peer: P, sock: ProbeSocket): boolean {
    const s = this.peers.get(peer);
    return !!s && (s.kept === sock || !!s.attempt?.sockets.includes(sock));
  }

  /** The peer's path left its extra socket (back to the relay): close it. */
  release(peer: P): void {
    const s = this.peers.get(peer);
    if (s?.kept) {
      this.closeAll([s.kept]);
      s.kept = null;
    }
  }

  /** The peer is gone: end its attempt and close its sockets. */
  forget(peer: P): void {
    const s = this.peers.get(peer);
    if (!s) return;
    const a = this.end(s);
    if (a) this.closeAll(a.sockets);
    if (s.kept) this.closeAll([s.kept]);
    this.peers.delete(peer);
  }

  stop(): void {
    for (const peer of [...this.peers.keys()]) this.forget(peer);
  }

  private closeAll(list: ProbeSocket[]): void {
    for (const sock of list) {
      try {
        sock.close();
      } catch {
        // already closed
      }
    }
    this.openSockets -= list.length;
    this.stats.socketsOpen = this.openSockets;
  }
}
