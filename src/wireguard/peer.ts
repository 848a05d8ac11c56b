import { Handshake, type LocalIdentity } from './noise.js';
import { CookieGenerator } from './cookie.js';
import { KeypairSlots } from './keypair.js';
import { PEER_DROP_REASONS, zeroCounters, type PeerDropReason } from './counters.js';
import { MAX_STAGED_PACKETS } from './constants.js';
import type { Endpoint } from './endpoint.js';

export interface PeerOptions {
  publicKey: Uint8Array;
  presharedKey?: Uint8Array;
  endpoint?: Endpoint | null;
  /** Seconds; 0 = off. */
  persistentKeepalive?: number;
}

/** Everything the device knows about one peer: keys, sessions, endpoint, timer marks, counters. */
export class Peer {
  readonly publicKey: Uint8Array;
  /** Replaced (not mutated) when our own static key changes: it caches DH(our key, theirs). */
  handshake: Handshake;
  readonly cookies: CookieGenerator;
  readonly keypairs = new KeypairSlots();
  endpoint: Endpoint | null;
  persistentKeepalive: number;

  /** Packets waiting for a session, oldest first; each has 16 spare bytes for padding. */
  staged: { buf: Buffer; len: number }[] = [];

  // Timer marks (ms since epoch). See timers.ts for what each drives.
  lastSentAt = 0;
  lastReceivedAt = 0;
  lastDataReceivedAt = 0;
  /** First data packet sent since we last heard from the peer; null when answered. */
  unansweredSince: number | null = null;
  /** When the current round of handshake attempts began; null when none is in progress. */
  handshakeAttemptStartedAt: number | null = null;
  lastInitiationSentAt = -Infinity;
  nextRetransmitAt = Infinity;
  latestHandshakeAt: number | null = null;
  handshakes = 0;

  rxBytes = 0;
  txBytes = 0;
  /** Transport messages (keepalives included) authenticated from / sent to the peer. */
  rxPackets = 0;
  txPackets = 0;
  readonly dropped: Record<PeerDropReason, number> = zeroCounters(PEER_DROP_REASONS);

  constructor(local: LocalIdentity, opts: PeerOptions) {
    this.publicKey = opts.publicKey;
    this.handshake = new Handshake(local, opts.publicKey, opts.presharedKey);
    this.cookies = new CookieGenerator(opts.publicKey);
    this.endpoint = opts.endpoint ?? null;
    this.persistentKeepalive = opts.persistentKeepalive ?? 0;
  }

  /** Queues a copy of a packet until a session exists; the oldest is dropped when full. */
  stage(src: Buffer, off: number, len: number): void {
    if (this.staged.length >= MAX_STAGED_PACKETS) {
      this.staged.shift();
      this.dropped.stagedOverflow++;
    }
    const buf = Buffer.allocUnsafe(len + 16);
    src.copy(buf, 0, off, off + len);
    this.staged.push({ buf, len });
  }
}
