import { KeyedBudget, monotonicMs } from '../util/token-bucket.js';
import { Refusal } from './refusals.js';

/**
 * What one agent may make the registry do for it: joins, publishes, heartbeats and leaves each
 * cost a signature check and a transaction (~1 ms of CPU here), so a malicious member writing as
 * fast as its connections allow could take the registry from the whole fleet. A token bucket per
 * agent ID, checked before the signature and spent once it verified; a replay of a record or
 * timestamp, which anyone who saw it can send, is refunded when the store finds it out and
 * spends the sender's address's failure budget instead (agent-routes.ts), so no one but the
 * agent can spend its budget. An honest agent heartbeats once per interval and publishes on a
 * change; its client retries a refused heartbeat at the next interval and a refused publish with
 * backoff.
 */

/** A restart (leave, join, publish, heartbeat) several times over, and a burst of publishes on a roam. */
export const WRITE_BURST = 30;
/** Writes per heartbeat interval past the burst (and never fewer than 2 a second). */
const WRITES_PER_HEARTBEAT = 4;
const MIN_WRITES_PER_SECOND = 2;

export class WriteBudget {
  private readonly budget: KeyedBudget;

  constructor(heartbeatIntervalMs: number) {
    this.budget = new KeyedBudget(Math.max(MIN_WRITES_PER_SECOND, (WRITES_PER_HEARTBEAT * 1000) / heartbeatIntervalMs), WRITE_BURST);
  }

  /** Refuses (AGENT_RATE_LIMITED, with the wait in `retryAfterMs`) a write of an agent that spent its budget; call before its signature is checked. */
  check(id: string, now = monotonicMs()): void {
    if (this.budget.tokens(id, now) < 1) {
      const retryAfterMs = Math.ceil(this.budget.waitMs(id, 1, now));
      throw new Refusal('AGENT_RATE_LIMITED', `agent ${id} wrote more than the registry takes from one agent; retry in ${retryAfterMs} ms`, { retryAfterMs });
    }
  }

  /** Takes one write of an agent whose signature verified (at once, so concurrent writes cannot all pass check()). */
  spend(id: string, now = monotonicMs()): void {
    this.budget.spend(id, 1, now);
  }

  /** Gives back a write that the store found to be a replay: anyone who saw it could have sent it. */
  refund(id: string, now = monotonicMs()): void {
    this.budget.refund(id, 1, now);
  }
}
