/**
 * Fair shares of one read round. When a recvmmsg round comes back full, the relay is behind: the
 * kernel queue holds more than it read. Then it does the work (hello checks, lookups, forwarding)
 * of at most ROUND_WORK_BUDGET datagrams of that round, shared max-min between sources: a source
 * that sent less than its share keeps every datagram, and the excess of the heaviest sources is
 * dropped first. One flooding source thus cannot take a round from everyone else, and shedding
 * half of each full round lets the relay catch up with its queue. Rounds that are not full shed
 * nothing here (the per-agent buckets still apply).
 */

/** Datagrams of a full round that get work done; half of the native reader's 1024-datagram round. */
export const ROUND_WORK_BUDGET = 512;

export class RoundShares {
  private readonly left = new Map<string, number>();
  private limited = false;

  /**
   * Starts a round made of `runs` runs of datagrams: run r has counts[r] datagrams from source
   * sources[r]. Shares are computed only when the round is full.
   */
  begin(sources: readonly string[], counts: Int32Array, runs: number, full: boolean): void {
    this.left.clear();
    let total = 0;
    for (let r = 0; r < runs; r++) total += counts[r];
    this.limited = full && total > ROUND_WORK_BUDGET;
    if (!this.limited) return;
    for (let r = 0; r < runs; r++) this.left.set(sources[r], (this.left.get(sources[r]) ?? 0) + counts[r]);
    const quota = maxMinQuota([...this.left.values()], ROUND_WORK_BUDGET);
    for (const [k, n] of this.left) this.left.set(k, Math.min(n, quota));
  }

  /** How many of `wanted` next datagrams of this source get their work done this round (the rest are dropped). */
  take(source: string, wanted: number): number {
    if (!this.limited) return wanted;
    const left = this.left.get(source) ?? 0;
    const granted = Math.min(left, wanted);
    this.left.set(source, left - granted);
    return granted;
  }
}

/** The largest per-source quota q with Σ min(count, q) ≤ budget (at least 1): water-filling. */
export function maxMinQuota(counts: number[], budget: number): number {
  counts.sort((a, b) => a - b);
  let left = budget;
  for (let i = 0; i < counts.length; i++) {
    const share = left / (counts.length - i);
    if (counts[i] > share) return Math.max(1, Math.floor(share));
    left -= counts[i];
  }
  return Infinity;
}
