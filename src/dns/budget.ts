import { SourceBuckets, TokenBucket } from '../util/token-bucket.js';

/**
 * Sources tracked at once. Beyond it the one seen first is forgotten and starts again with a
 * full bucket: whoever has that many addresses still meets the total budget.
 */
const MAX_TRACKED_SOURCES = 4096;

export interface QueryBudgetRates {
  perSourceRate: number;
  perSourceBurst: number;
  totalRate: number;
  totalBurst: number;
}

/** Token buckets per source address and over all sources: one query costs a token of each. */
export class QueryBudget {
  private readonly sources: SourceBuckets;
  private readonly total: TokenBucket;

  constructor(rates: QueryBudgetRates) {
    this.sources = new SourceBuckets(rates.perSourceRate, rates.perSourceBurst, MAX_TRACKED_SOURCES);
    this.total = new TokenBucket(rates.totalRate, rates.totalBurst);
  }

  /** True (and charged) when the source, then everyone together, has a token left. */
  take(source: string): boolean {
    return this.sources.take(source) && this.total.take();
  }
}
