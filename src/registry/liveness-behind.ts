/**
 * Write-behind of heartbeats that change nothing but last_seen (pg-store.ts): collected per
 * agent and written in one statement per flush, instead of one UPDATE (and one NOTIFY to every
 * instance) per heartbeat. At most one entry per agent, so it is bounded by the fleet. What is
 * lost when the process dies before a flush is under a second of last_seen: the agents stay
 * online, and their next heartbeat writes it again.
 */

/** How often the collected last_seen values are written: the registry's own sweep runs as often (protocol.ts SWEEP_INTERVAL_MS). */
export const FLUSH_INTERVAL_MS = 1_000;

export type LastSeenUpdate = { network: string; id: string; lastSeen: number };

export class LivenessBehind {
  private pending = new Map<string, LastSeenUpdate>();
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;

  /** `write` stores a batch; a batch it fails to store is kept for the next flush (newer values win). */
  constructor(private readonly write: (updates: LastSeenUpdate[]) => Promise<void>, private readonly intervalMs = FLUSH_INTERVAL_MS) {}

  note(network: string, id: string, lastSeen: number): void {
    const key = `${network}\n${id}`;
    const held = this.pending.get(key);
    if (!held || held.lastSeen < lastSeen) this.pending.set(key, { network, id, lastSeen });
    this.timer ??= setTimeout(() => void this.flush(), this.intervalMs).unref();
  }

  get size(): number {
    return this.pending.size;
  }

  /** Writes what is pending now (one flush at a time). */
  async flush(): Promise<void> {
    this.timer = null;
    await this.flushing;
    if (this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    this.flushing = this.write([...batch.values()]).catch(() => {
      for (const [key, u] of batch) if ((this.pending.get(key)?.lastSeen ?? -Infinity) < u.lastSeen) this.pending.set(key, u);
      this.timer ??= setTimeout(() => void this.flush(), this.intervalMs).unref();
    }).finally(() => {
      this.flushing = null;
    });
    await this.flushing;
  }

  /** Stops the timer after a last flush. */
  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.flush();
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
