import { KeyedBudget, monotonicMs } from '../util/token-bucket.js';
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
/** Budgets kept: one per member that shipped recently. */
const MAX_AGENTS = 100_000;

export class AuditShipBudget {
  private readonly ships = new KeyedBudget(SHIPS_PER_SECOND, BURST_SHIPS, MAX_AGENTS);
  private readonly bytes = new KeyedBudget(BYTES_PER_SECOND, BURST_BYTES, MAX_AGENTS);
  /** Ships refused for the budget (for stats). */
  refused = 0;

  /** Refuses (AUDIT_RATE_LIMITED) a ship of an agent that spent its budget. */
  check(agent: string, now = monotonicMs()): void {
    if (this.ships.tokens(agent, now) >= 1 && this.bytes.tokens(agent, now) > 0) return;
    this.refused++;
    const waitMs = Math.max(this.ships.waitMs(agent, 1, now), this.bytes.waitMs(agent, 0, now));
    refuse('AUDIT_RATE_LIMITED', `agent ${agent} shipped more audit entries than the registry takes per second; wait ${Math.ceil(waitMs / 1000)} s`);
  }

  /** Takes one ship of `bytes` (it may overdraw the bytes once: the next ship then waits for the refill). */
  spend(agent: string, bytes: number, now = monotonicMs()): void {
    this.ships.spend(agent, 1, now);
    this.bytes.spend(agent, bytes, now);
  }
}
