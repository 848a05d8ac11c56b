import { performance } from 'node:perf_hooks';

/** Milliseconds on a monotonic clock: a wall-clock step must neither refill nor drain a budget. */
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

/**
 * One token bucket per source (an address as a string key), in a map that stays bounded however
 * many sources a flood invents: when it is full, buckets that have refilled (their source went
 * quiet) are forgotten, and if none has, new sources are refused instead of growing the map. The
 * sweep runs at most every PRUNE_INTERVAL_MS, so a flood of new sources cannot make each packet O(n).
 */
const PRUNE_INTERVAL_MS = 100;

export class SourceBuckets {
  private readonly buckets = new Map<string, TokenBucket>();
  private lastPruneAt = -Infinity;

  constructor(private readonly rate: number, private readonly burst: number, private readonly maxSources: number) {}

  take(source: string, now = monotonicMs()): boolean {
    let b = this.buckets.get(source);
    if (!b) {
      if (this.buckets.size >= this.maxSources && !this.prune(now)) return false;
      b = new TokenBucket(this.rate, this.burst, now);
      this.buckets.set(source, b);
    }
    return b.take(1, now);
  }

  get size(): number {
    return this.buckets.size;
  }

  /** Drops buckets that are full again; true when room was made. */
  private prune(now: number): boolean {
    if (now - this.lastPruneAt < PRUNE_INTERVAL_MS) return false;
    this.lastPruneAt = now;
    for (const [k, b] of this.buckets) if (b.take(this.burst, now)) this.buckets.delete(k);
    return this.buckets.size < this.maxSources;
  }
}
