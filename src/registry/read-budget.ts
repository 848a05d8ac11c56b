import { KeyedBudget, monotonicMs } from '../util/token-bucket.js';
import { Refusal } from './refusals.js';

/**
 * What one reader (an agent, or the holder of a join token) may make the registry do for it.
 * Reads are answered from memory, but a member looking up or listing 1,000-agent pages in a
 * loop, or reconnecting its event stream for a snapshot of the whole fleet each time, could
 * still take the registry's event loop from everyone. Two token buckets per credential:
 *
 * - reads, in units of work: every read costs READ_COST, a signed one (not under a read
 *   session: a signature check and a database write of its timestamp) SIGNED_READ_COST more,
 *   and each agent a list page sends (or a stream resumed from an old point catches up on)
 *   1 / AGENTS_PER_UNIT more;
 * - event streams whose first answer is a snapshot or a resume by buckets: STREAM_BURST, then
 *   one per 1 / STREAM_RATE s. Their cost grows with the fleet, so they are counted apart
 *   from reads: a daemon's first snapshot of a 50,000-agent fleet must not cost its lookups.
 *
 * Checked before the request is authorized (a signed read: before its signature) and spent once
 * it is, so no one but the reader spends its budget. A page is spent after it is built (the
 * bucket may go below zero), so a reader's large answer delays its next one.
 */

/** Units a reader may spend at once: a walk of a 10,000-agent fleet, five times over. */
export const READ_BURST = 1_000;
/** Units per second past the burst: ~100 lookups, or ~9 pages of 1,000 agents (~40 ms of CPU here). */
export const READ_RATE = 100;
export const READ_COST = 1;
export const SIGNED_READ_COST = 3;
export const AGENTS_PER_UNIT = 100;
/** Snapshots at once: the 4 streams a credential may hold (events.ts), each reconnected once, and two more. */
export const STREAM_BURST = 10;
/** Snapshots per second past the burst (one per 5 s: ~3 ms of CPU a second at 10,000 agents). */
export const STREAM_RATE = 0.2;

export class ReadBudget {
  private readonly reads = new KeyedBudget(READ_RATE, READ_BURST);
  private readonly streams = new KeyedBudget(STREAM_RATE, STREAM_BURST);

  /** Refuses (AGENT_RATE_LIMITED, with the wait in `retryAfterMs`) a read, or an event stream, of a reader that spent its budget. */
  check(reader: string, { stream = false }: { stream?: boolean } = {}, now = monotonicMs()): void {
    if (this.reads.tokens(reader, now) < READ_COST) limited(`${describe(reader)} read more than the registry answers for one reader`, this.reads.waitMs(reader, READ_COST, now));
    if (stream && this.streams.tokens(reader, now) < 1) limited(`${describe(reader)} opened more event streams from a snapshot than the registry serves one reader`, this.streams.waitMs(reader, 1, now));
  }

  /** Spends an authorized read. */
  spend(reader: string, { signed }: { signed: boolean }, now = monotonicMs()): void {
    this.reads.spend(reader, READ_COST + (signed ? SIGNED_READ_COST : 0), now);
  }

  /** Spends what a read's answer sent: the agents of a list page, a stream that started from a snapshot or buckets. */
  sent(reader: string, { agents = 0, snapshot = false }: { agents?: number; snapshot?: boolean }, now = monotonicMs()): void {
    if (agents > 0) this.reads.spend(reader, agents / AGENTS_PER_UNIT, now);
    if (snapshot) this.streams.spend(reader, 1, now);
  }
}

function limited(what: string, waitMs: number): never {
  const retryAfterMs = Math.ceil(waitMs);
  throw new Refusal('AGENT_RATE_LIMITED', `${what}; retry in ${retryAfterMs} ms`, { retryAfterMs });
}

/** "agent <id>" or "this join token", from a credential key (request-auth.ts). */
function describe(reader: string): string {
  return reader.startsWith('agent:') ? `agent ${reader.slice('agent:'.length)}` : 'this join token';
}
