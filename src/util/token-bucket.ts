/** Milliseconds on a monotonic clock: a wall-clock step must neither refill nor drain a budget. (The global, so fake timers can move it.) */
export const monotonicMs = (): number => globalThis.performance.now();

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

/**
 * Token buckets by key (an agent ID) that are read and spent apart: a request's budget is checked
 * before its signature and spent once it verified, so only the key's holder can spend it; a held
 * change waits for the time its key's next token takes. A key not seen holds a full bucket. At most `maxKeys` are kept: past that, the full ones are forgotten
 * (they equal a new one), and if none is full the oldest.
 */
export class KeyedBudget {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(readonly rate: number, readonly capacity: number, private readonly maxKeys = 100_000) {}

  /** The tokens `key` holds now. */
  tokens(key: string, now = monotonicMs()): number {
    return this.refill(key, now)?.tokens ?? this.capacity;
  }

  /** Milliseconds until `key` holds `n` tokens (0: it does). */
  waitMs(key: string, n = 1, now = monotonicMs()): number {
    return Math.max(0, ((n - this.tokens(key, now)) / this.rate) * 1000);
  }

  /** Takes `n` tokens; it may overdraw, and the key then waits for the refill. */
  spend(key: string, n = 1, now = monotonicMs()): void {
    let b = this.refill(key, now);
    if (!b) {
      if (this.buckets.size >= this.maxKeys) this.evict(now);
      this.buckets.set(key, (b = { tokens: this.capacity, at: now }));
    }
    b.tokens -= n;
  }

  /** Gives back `n` tokens taken for a request that turned out not to be the key holder's (at most to a full bucket). */
  refund(key: string, n = 1, now = monotonicMs()): void {
    const b = this.refill(key, now);
    if (b) b.tokens = Math.min(this.capacity, b.tokens + n);
  }

  private refill(key: string, now: number): { tokens: number; at: number } | undefined {
    const b = this.buckets.get(key);
    if (!b) return undefined;
    b.tokens = Math.min(this.capacity, b.tokens + (Math.max(0, now - b.at) / 1000) * this.rate);
    b.at = now;
    return b;
  }

  private evict(now: number): void {
    for (const [key] of this.buckets) if (this.refill(key, now)!.tokens >= this.capacity) this.buckets.delete(key);
    if (this.buckets.size >= this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!);
  }
}
