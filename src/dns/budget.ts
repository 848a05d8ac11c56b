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

/**
 * What a client's budget and connections are counted under: its address, except that every
 * loopback address (127.0.0.0/8, ::1, ::ffff:127.x) is one source. Any local user may send from
 * any of the 16 million 127/8 addresses, which would otherwise each be a budget of its own.
 */
export function sourceKey(address: string): string {
  return address.startsWith('127.') || address === '::1' || address.startsWith('::ffff:127.') ? 'loopback' : address;
}
