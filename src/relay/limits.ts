import { performance } from 'node:perf_hooks';
import { AgentVpnError } from '../errors.js';

/**
 * Token buckets for the relay: per-agent packet and byte rates, and the budgets that keep the
 * relay itself cheap to run (signature checks, notices).
 */

export interface RelayLimits {
  /** Packets per second each agent may send through the relay. */
  packetsPerSecond: number;
  /** Bytes per second (packet bytes) each agent may send through the relay. */
  bytesPerSecond: number;
  /** How far an agent may run ahead of its rates: bucket sizes in packets and bytes. */
  burst: { packets: number; bytes: number };
}

/**
 * Per agent: ~200 Mbit/s of full-size WireGuard packets, which is what one relay core forwards
 * comfortably; a burst of half a second absorbs TCP slow-start without queueing.
 */
export const DEFAULT_LIMITS: RelayLimits = {
  packetsPerSecond: 20_000,
  bytesPerSecond: 25_000_000,
  burst: { packets: 10_000, bytes: 12_500_000 },
};

/**
 * Hello signatures the relay checks per second, over all clients: an Ed25519 verification costs
 * ~50 µs, so a flood of forged hellos may take at most ~10% of a core. The burst lets a fleet
 * of 10,000 agents say hello again at once after a relay restart (~0.5 s of CPU, once).
 */
export const HELLO_VERIFY_RATE = 2_000;
export const HELLO_VERIFY_BURST = 10_000;
/** Notices per second to one agent: enough to learn "peer not here" at once, too few to echo floods. */
export const NOTICE_RATE_PER_CLIENT = 10;
/** Notices per second to sources the relay does not know (not registered, refused hellos), over all of them. */
export const NOTICE_RATE_UNKNOWN = 200;

/** Milliseconds on a monotonic clock (wall-clock steps must not refill or drain buckets). */
export const monotonicMs = (): number => performance.now();

/** A token bucket: `rate` tokens per second, holding at most `capacity`; starts full. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(private readonly rate: number, private readonly capacity: number, now = monotonicMs()) {
    this.tokens = capacity;
    this.last = now;
  }

  /** Takes `n` tokens if there are that many; false (taking none) otherwise. */
  take(n = 1, now = monotonicMs()): boolean {
    if (now > this.last) {
      this.tokens = Math.min(this.capacity, this.tokens + ((now - this.last) * this.rate) / 1000);
      this.last = now;
    }
    if (this.tokens < n) return false;
    this.tokens -= n;
    return true;
  }
}

export function validateLimits(l: RelayLimits): RelayLimits {
  const ok = (v: number) => Number.isFinite(v) && v > 0;
  if (!ok(l.packetsPerSecond) || !ok(l.bytesPerSecond) || !ok(l.burst?.packets) || !ok(l.burst?.bytes)) {
    throw new AgentVpnError('BAD_LIMITS', 'relay limits must be positive numbers', 'give packets and bytes per second and burst sizes above zero');
  }
  return l;
}
