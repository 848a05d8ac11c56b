/**
 * How often an event of one kind is written down per key (an agent ID, a client address) and in
 * total, per time window: what a flood may make the registry store (refusals, audit entries) is
 * bounded, and the events left out are counted and handed to the next one written for that key
 * (so the record says how many it stands for). Keys are bounded too: past `maxKeys` within a
 * window, new keys count toward the total only (what they skip is in `skippedTotal`).
 */

export interface EventLimits {
  perKey: number;
  total: number;
  windowMs: number;
  maxKeys: number;
}

interface KeyState {
  count: number;
  skipped: number;
}

export class EventLimit {
  private window = -1;
  private total = 0;
  private readonly keys = new Map<string, KeyState>();
  /** Every event left out, ever (for stats). */
  skippedTotal = 0;

  constructor(private readonly limits: EventLimits) {}

  /**
   * Whether an event for `key` may be written now: null when it must be left out (it is counted),
   * else how many events it stands for besides itself (those left out for this key since its last).
   */
  take(key: string, now = Date.now()): { skipped: number } | null {
    this.roll(now);
    let state = this.keys.get(key);
    if (!state && this.keys.size < this.limits.maxKeys) this.keys.set(key, (state = { count: 0, skipped: 0 }));
    if (this.total >= this.limits.total || (state && state.count >= this.limits.perKey)) {
      this.skippedTotal++;
      if (state) state.skipped++;
      return null;
    }
    this.total++;
    if (!state) return { skipped: 0 };
    state.count++;
    const skipped = state.skipped;
    state.skipped = 0;
    return { skipped };
  }

  private roll(now: number): void {
    const window = Math.floor(now / this.limits.windowMs);
    if (window === this.window) return;
    this.window = window;
    this.total = 0;
    // Keys with nothing pending start afresh; the others keep their tally for their next event.
    for (const [key, s] of this.keys) {
      if (s.skipped === 0) this.keys.delete(key);
      else s.count = 0;
    }
  }
}
