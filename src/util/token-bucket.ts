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
 * One token bucket per source (an address as a string key), at most `maxSources` of them: past
 * that, the source seen first is forgotten and starts again with a full bucket. Whoever invents
 * that many sources still meets the total budget kept beside this one, so the map stays bounded
 * and a flood of new sources costs O(1) each.
 */
export class SourceBuckets {
  private readonly buckets = new Map<string, TokenBucket>();

  constructor(private readonly rate: number, private readonly burst: number, private readonly maxSources: number) {}

  take(source: string, now = monotonicMs()): boolean {
    let b = this.buckets.get(source);
    if (!b) {
      if (this.buckets.size >= this.maxSources) this.buckets.delete(this.buckets.keys().next().value!);
      this.buckets.set(source, (b = new TokenBucket(this.rate, this.burst, now)));
    }
    return b.take(1, now);
  }

  get size(): number {
    return this.buckets.size;
  }
}
