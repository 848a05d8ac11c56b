import { refuse } from './refusals.js';

/**
 * What one agent may make the registry verify and store of its audit log: token buckets of ships
 * (each costs a signature check, up to 512 entry parses and a transaction) and of bytes (what it
 * adds to the database for good). Checked before the body is read; spent only once the ship's
 * checkpoint verified, so no one but the agent (or a replay of its own ships) can spend it.
 * Honest agents ship a few hundred bytes every few seconds and never meet it; a catch-up after a
 * long outage is slowed to the refill rate, never refused for good (the shipper retries).
 */

/** A few full ships back to back (a restart after an outage), then the refill rate. */
const BURST_SHIPS = 16;
/** Ships per second per agent: a shipper sends one per second at most when caught up. */
const SHIPS_PER_SECOND = 2;
/** 4 MiB at once: about 10,000 entries of a few hundred bytes. */
const BURST_BYTES = 4 * 1024 * 1024;
/** 32 KiB/s per agent: ~100 events a second sustained, far above an honest agent; bounds a malicious member to ~2.7 GB a day. */
const BYTES_PER_SECOND = 32 * 1024;
/** Buckets kept: one per member that shipped recently; full buckets are forgotten (a new one starts full). */
const MAX_AGENTS = 100_000;

interface Bucket {
  ships: number;
  bytes: number;
  at: number;
}

export class AuditShipBudget {
  private readonly buckets = new Map<string, Bucket>();
  /** Ships refused for the budget (for stats). */
  refused = 0;

  /** Refuses (AUDIT_RATE_LIMITED) a ship of an agent that spent its budget. */
  check(agent: string, now = Date.now()): void {
    const b = this.refill(agent, now);
    if (b && (b.ships < 1 || b.bytes <= 0)) {
      this.refused++;
      refuse('AUDIT_RATE_LIMITED', `agent ${agent} shipped more audit entries than the registry takes per second; wait ${Math.ceil(this.waitMs(b) / 1000)} s`);
    }
  }

  /** Takes one ship of `bytes` (it may overdraw the bytes once: the next ship then waits for the refill). */
  spend(agent: string, bytes: number, now = Date.now()): void {
    let b = this.refill(agent, now);
    if (!b) {
      if (this.buckets.size >= MAX_AGENTS) this.evict(now);
      this.buckets.set(agent, (b = { ships: BURST_SHIPS, bytes: BURST_BYTES, at: now }));
    }
    b.ships -= 1;
    b.bytes -= bytes;
  }

  private refill(agent: string, now: number): Bucket | undefined {
    const b = this.buckets.get(agent);
    if (!b) return undefined;
    const seconds = Math.max(0, now - b.at) / 1000;
    b.ships = Math.min(BURST_SHIPS, b.ships + seconds * SHIPS_PER_SECOND);
    b.bytes = Math.min(BURST_BYTES, b.bytes + seconds * BYTES_PER_SECOND);
    b.at = now;
    return b;
  }

  private waitMs(b: Bucket): number {
    return Math.max((1 - b.ships) / SHIPS_PER_SECOND, -b.bytes / BYTES_PER_SECOND, 0) * 1000;
  }

  /** Forgets the buckets that refilled (they equal a new one); if none did, the oldest. */
  private evict(now: number): void {
    for (const [agent] of this.buckets) {
      const b = this.refill(agent, now)!;
      if (b.ships >= BURST_SHIPS && b.bytes >= BURST_BYTES) this.buckets.delete(agent);
    }
    if (this.buckets.size >= MAX_AGENTS) this.buckets.delete(this.buckets.keys().next().value!);
  }
}
