import {
  HELLO_VERIFY_BURST, HELLO_VERIFY_BURST_PER_SOURCE, HELLO_VERIFY_RATE, HELLO_VERIFY_RATE_PER_SOURCE, MAX_TRACKED_SOURCES,
} from './limits.js';
import { SourceBuckets, TokenBucket } from '../util/token-bucket.js';
import type { ChallengeMinter, ChallengeTransport } from './challenge.js';
import { MAX_CLOCK_SKEW_MS, NOTICE_BAD_SIGNATURE, NOTICE_NOT_ALLOWED, NOTICE_STALE_TIMESTAMP, type Hello, type RelayLog } from './protocol.js';

/**
 * Admission of relay hellos, cheapest check first, so a flood of forged hellos costs little:
 *
 *   0. the relay name the hello was signed for is one of ours   (a 16-byte compare per name; a
 *      (relay-name.ts): a hello meant for another relay, passed  refusal is answered only where
 *      on by it, is refused before anything else is looked at   the challenge proves the source)
 *   1. the challenge: ours, this epoch or the last, made for the  (one MAC; a failure is answered
 *      address and port the hello comes from                     with a fresh challenge)
 *   2. timestamp within MAX_CLOCK_SKEW_MS of our clock          (arithmetic)
 *   3. timestamp newer than the key's last verified one          (one map lookup; stops replays)
 *   4. the key is allowed: the allow hook gives its networks     (an in-memory lookup; strangers
 *                                                                 cost no signature check)
 *   5. re-hello: the key's session is already on this transport  (acked as is, changes nothing)
 *   6. the source's verify budget (IPv4 address, IPv6 /64)       (so no source spends the total)
 *   7. the global verify budget
 *   8. the Ed25519 signature                                     (~40 µs)
 *
 * Size and version were checked by parseHello before. A hello shed by a budget gets no notice:
 * the client's retransmission (every second) tries again. Past step 1 the source has shown it
 * receives at its address, so the notices of later steps go only where the challenge went.
 */

/** The networks an agent belongs to; the relay forwards only between sessions sharing one. */
export type Networks = readonly string[];

/**
 * Who may use the relay: the networks of an Ed25519 key, or null to refuse it. Called for every
 * hello before its signature is checked, and again at every sweep: it must be an in-memory lookup.
 */
export type AllowHook = (edPub: Uint8Array) => Networks | null;

/** Without an allow hook, every agent is in this one network (an open relay). */
export const OPEN_NETWORKS: Networks = Object.freeze(['']);

/** What the gate needs to know about the session the hello's key already has, if any. */
export interface SessionOfKey {
  /** Timestamp of its last verified hello. */
  lastHelloTs: number;
  /** The hello came over the session's own transport (same UDP address and port, or same TCP connection). */
  onThisTransport: boolean;
}

/** Where a hello came from, as its challenge must name it: 18 address and port bytes at addr[off], and the transport. */
export interface HelloSource {
  addr: Uint8Array;
  off: number;
  transport: ChallengeTransport;
  /** The budgets' key (IPv4 address, IPv6 /64). */
  key: string;
}

export type HelloVerdict =
  | { kind: 'wrong-relay'; sourceProven: boolean }
  | { kind: 'bad-challenge' }
  | { kind: 'refused'; reason: 'stale-timestamp' | 'not-allowed' | 'bad-signature'; notice: number }
  | { kind: 'shed'; reason: 'hello-source-rate' | 'hello-rate' }
  | { kind: 're-hello' }
  | { kind: 'verified'; networks: Networks };

/** Last verified hello timestamps of keys without a session, kept this many at most (FIFO). */
const MAX_REMEMBERED_TIMESTAMPS = 100_000;

export class HelloGate {
  private readonly perSource = new SourceBuckets(HELLO_VERIFY_RATE_PER_SOURCE, HELLO_VERIFY_BURST_PER_SOURCE, MAX_TRACKED_SOURCES);
  private readonly total = new TokenBucket(HELLO_VERIFY_RATE, HELLO_VERIFY_BURST);
  /** By Ed25519 key (latin1): for keys whose session is gone. Sessions keep their own. */
  private readonly remembered = new Map<string, { ts: number; at: number }>();
  verified = 0;

  /** `names`: the hashes of the relay names we answer to (relay-name.ts acceptedNameHashes). */
  constructor(private readonly allow: AllowHook | undefined, private readonly challenges: ChallengeMinter, private readonly names: readonly Buffer[], private readonly log: RelayLog) {}

  check(hello: Hello, edId: string, source: HelloSource, session: SessionOfKey | undefined, now = Date.now()): HelloVerdict {
    if (!this.isOurs(hello.relayName)) return { kind: 'wrong-relay', sourceProven: this.challenges.check(hello.challenge, source.addr, source.off, source.transport) };
    if (!this.challenges.check(hello.challenge, source.addr, source.off, source.transport)) return { kind: 'bad-challenge' };
    if (Math.abs(now - hello.timestamp) > MAX_CLOCK_SKEW_MS) return { kind: 'refused', reason: 'stale-timestamp', notice: NOTICE_STALE_TIMESTAMP };
    const last = session?.lastHelloTs ?? this.remembered.get(edId)?.ts;
    if (last !== undefined && hello.timestamp <= last) return { kind: 'refused', reason: 'stale-timestamp', notice: NOTICE_STALE_TIMESTAMP };
    const networks = this.networksOf(hello.edPub);
    if (!networks) return { kind: 'refused', reason: 'not-allowed', notice: NOTICE_NOT_ALLOWED };
    if (session?.onThisTransport) return { kind: 're-hello' };
    if (!this.perSource.take(source.key)) return { kind: 'shed', reason: 'hello-source-rate' };
    if (!this.total.take()) return { kind: 'shed', reason: 'hello-rate' };
    this.verified++;
    if (!hello.verify()) return { kind: 'refused', reason: 'bad-signature', notice: NOTICE_BAD_SIGNATURE };
    return { kind: 'verified', networks };
  }

  private isOurs(nameHash: Buffer): boolean {
    for (const n of this.names) if (n.equals(nameHash)) return true;
    return false;
  }

  /** The key's networks now (null: refused); the sweep asks again, so membership changes take effect. */
  networksOf(edPub: Uint8Array): Networks | null {
    if (!this.allow) return OPEN_NETWORKS;
    try {
      const n = this.allow(edPub);
      return n && n.length > 0 ? n : null;
    } catch (err) {
      this.log.error({ err }, 'relay allow hook failed');
      return null;
    }
  }

  /** Keeps a verified timestamp of a key whose session is being forgotten (a replay of its last hello stays refused). */
  remember(edId: string, ts: number, now = Date.now()): void {
    this.remembered.delete(edId);
    if (this.remembered.size >= MAX_REMEMBERED_TIMESTAMPS) this.remembered.delete(this.remembered.keys().next().value!);
    this.remembered.set(edId, { ts, at: now });
  }

  /** Forgets timestamps too old to pass the skew check anyway. */
  sweep(now = Date.now()): void {
    for (const [k, v] of this.remembered) {
      if (now - v.at <= 2 * MAX_CLOCK_SKEW_MS) break; // insertion order: the rest are newer
      this.remembered.delete(k);
    }
  }
}
