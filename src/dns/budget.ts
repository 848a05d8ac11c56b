import { performance } from 'node:perf_hooks';

/**
 * Sources tracked at once. Beyond it the least recently seen one is forgotten and starts again
 * with a full bucket: whoever has that many addresses still meets the total budget.
 */
const MAX_TRACKED_SOURCES = 4096;

interface Bucket {
  tokens: number;
  /** Monotonic ms of the last refill (wall-clock steps must neither refill nor drain). */
  at: number;
}

export interface QueryBudgetRates {
  perSourceRate: number;
  perSourceBurst: number;
  totalRate: number;
  totalBurst: number;
}

/** Token buckets per source address and over all sources: one query costs one token of each. */
export class QueryBudget {
  private readonly sources = new Map<string, Bucket>();
  private readonly total: Bucket;

  constructor(private readonly rates: QueryBudgetRates, now = performance.now()) {
    this.total = { tokens: rates.totalBurst, at: now };
  }

  /** True (and charged) when both the source and everyone together have a token left. */
  take(source: string, now = performance.now()): boolean {
    let own = this.sources.get(source);
    if (own) {
      this.sources.delete(source); // re-inserted below: the map stays in least-recently-seen order
    } else {
      own = { tokens: this.rates.perSourceBurst, at: now };
      if (this.sources.size >= MAX_TRACKED_SOURCES) this.sources.delete(this.sources.keys().next().value!);
    }
    this.sources.set(source, own);
    refill(own, now, this.rates.perSourceRate, this.rates.perSourceBurst);
    refill(this.total, now, this.rates.totalRate, this.rates.totalBurst);
    if (own.tokens < 1 || this.total.tokens < 1) return false;
    own.tokens--;
    this.total.tokens--;
    return true;
  }
}

function refill(b: Bucket, now: number, rate: number, burst: number): void {
  if (now <= b.at) return;
  b.tokens = Math.min(burst, b.tokens + ((now - b.at) * rate) / 1000);
  b.at = now;
}
