import { TokenBucket } from '../util/token-bucket.js';
import { ENDPOINT_SIZE, formatEndpoint, sameEndpoint } from '../net/endpoint.js';
import type { Endpoint } from '../wireguard/endpoint.js';
import { ReplayWindow } from '../wireguard/replay.js';
import { discoBudget } from './constants.js';
import { MAX_CANDIDATES } from './disco.js';
import type { ProbeSocket } from './birthday.js';


/**
 * How one fleet peer is reached: its candidate endpoints, the best direct path found by disco
 * pings (with its RTT and when it last answered), and its relay fallback. It is the WireGuard
 * peer's endpoint: the socket sends to `direct` when there is one, else through the relay.
 */
export class PeerPath implements Endpoint {
  candidates: Buffer[] = [];
  direct: Buffer | null = null;
  /** The extra (birthday) socket the direct path goes through; null: the main socket. */
  socket: ProbeSocket | null = null;
  /** Active and without a direct path since (birthday probing starts after a while); null: direct or idle. */
  noDirectSince: number | null = null;
  directRttMs = Infinity;
  lastDirectPongAt = 0;
  relayRttMs: number | null = null;
  lastProbeAt = -Infinity;
  lastDirectPingAt = 0;
  /** First liveness ping on the direct path still without an answer; null when all were answered. */
  directUnansweredSince: number | null = null;
  lastCallMeMaybeAt = -Infinity;
  /** The relay the peer's record names as its home (where it is reached when relayed); null: ours. */
  homeRelay: string | null = null;
  /** Last time the device sent this peer anything through the relay (a reason to probe). */
  lastRelayedSendAt = 0;
  /** Disco counters seen from this peer: each message is accepted once. */
  readonly discoReplay = new ReplayWindow(discoBudget.replayWindowBits);
  /** Disco claiming this peer's key, from where it is expected / from anywhere else. */
  readonly discoExpected = new TokenBucket(discoBudget.expected.rate, discoBudget.expected.burst);
  readonly discoElsewhere = new TokenBucket(discoBudget.elsewhere.rate, discoBudget.elsewhere.burst);
  /** Pings we sent and not yet heard back on: each lets one reply past the disco budgets. */
  private awaitedReplies = 0;
  /** When we last sent each address a ping nobody on our side asked for (a ping back, a call-me-maybe's); at most MAX_CANDIDATES * 2 kept. */
  private readonly unaskedPingAt = new Map<string, number>();

  readonly rateKey: string;

  constructor(readonly wgKey: Buffer) {
    this.rateKey = `peer:${wgKey.toString('base64')}`;
  }

  /** WireGuard packets do not move a path: disco pings choose it. */
  roamed(): Endpoint {
    return this;
  }

  toString(): string {
    return this.direct ? formatEndpoint(this.direct) : 'relay';
  }

  setCandidates(all: Buffer[]): boolean {
    const list = all.filter((c) => isUsableCandidate(c, 0));
    const changed = list.length !== this.candidates.length || list.some((c, i) => !sameEndpoint(c, 0, this.candidates[i], 0));
    this.candidates = list.slice(0, MAX_CANDIDATES);
    return changed;
  }

  /** Adds a peer-reflexive candidate (where its pings came from), as hole punching finds them. */
  addCandidate(ep: Buffer, off = 0): void {
    if (!isUsableCandidate(ep, off) || this.candidates.some((c) => sameEndpoint(c, 0, ep, off))) return;
    this.candidates.push(Buffer.from(ep.subarray(off, off + ENDPOINT_SIZE)));
    if (this.candidates.length > MAX_CANDIDATES) this.candidates.shift();
  }

  /**
   * Whether `to` may be sent a ping that the peer's messages asked for (not our own probe round)
   * now: at most once per `everyMs` per address, so a member cannot turn us into a ping source.
   */
  mayPingUnasked(to: Buffer, now: number, everyMs: number): boolean {
    const key = formatEndpoint(to);
    if (now - (this.unaskedPingAt.get(key) ?? -Infinity) < everyMs) return false;
    if (this.unaskedPingAt.size >= MAX_CANDIDATES * 2) this.unaskedPingAt.clear();
    this.unaskedPingAt.set(key, now);
    return true;
  }

  awaitReply(): void {
    this.awaitedReplies = Math.min(this.awaitedReplies + 1, discoBudget.maxAwaitedReplies);
  }

  takeAwaitedReply(): boolean {
    if (this.awaitedReplies === 0) return false;
    this.awaitedReplies--;
    return true;
  }

  /** Whether disco from `from` (null: through the relay, which authenticated the sender) comes from where the peer is expected. */
  isExpectedSource(from: Buffer | null): boolean {
    if (from === null) return true;
    if (this.direct && sameEndpoint(this.direct, 0, from, 0)) return true;
    return this.candidates.some((c) => sameEndpoint(c, 0, from, 0));
  }

  describe(relayName: string | null): { kind: 'direct' | 'relay'; endpoint: string; rttMs: number | null; birthdaySocket?: true } {
    if (this.direct) {
      const described = { kind: 'direct' as const, endpoint: formatEndpoint(this.direct), rttMs: round(this.directRttMs) };
      return this.socket ? { ...described, birthdaySocket: true } : described;
    }
    return { kind: 'relay', endpoint: relayName ?? '(no relay)', rttMs: this.relayRttMs === null ? null : round(this.relayRttMs) };
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

/**
 * Whether an endpoint may be probed: a unicast address with a port. Loopback, unspecified,
 * multicast, link-local and the IPv4 overlay pool
 * (100.64.0.0/10) are refused, so a peer cannot point our probes at ourselves or into the tunnel.
 */
export function isUsableCandidate(ep: Uint8Array, off: number): boolean {
  if (ep.length < off + ENDPOINT_SIZE || ((ep[off + 16] << 8) | ep[off + 17]) === 0) return false;
  let mapped = true;
  for (let i = 0; i < 12; i++) if (ep[off + i] !== (i < 10 ? 0 : 0xff)) mapped = false;
  if (mapped) {
    const [a, b] = [ep[off + 12], ep[off + 13]];
    return a !== 0 && a !== 127 && a < 224 && !(a === 100 && b >= 64 && b < 128) && !(a === 169 && b === 254);
  }
  const first = ep[off];
  let zeroes = 0;
  for (let i = 0; i < 15; i++) if (ep[off + i] === 0) zeroes++;
  if (zeroes === 15) return false; // :: and ::1
  return first !== 0xff && !(first === 0xfe && (ep[off + 1] & 0xc0) === 0x80); // not multicast, not link-local
}
