import type { AgentChangeKind } from './protocol.js';

/**
 * Paces what each agent's changes cost the fleet. One change (a publish, a liveness flip) is
 * written to every event stream of its network and checked by every daemon that reads it, so a
 * member that publishes or flaps in a loop would cost O(fleet) per request it makes. Each agent
 * gets a token bucket of changes: within it a change goes out at once; past it the change waits
 * and later ones replace it, so at most one per refill interval goes out, always the agent's
 * latest view. Reads and lookups see the new record at once; nothing is lost, only delayed.
 * Honest agents change a few times on a restart or a roam and never wait.
 */

/** Changes that go out at once: a restart (leave, publish, heartbeat) or a roam, twice over. */
export const BURST_CHANGES = 10;
/** Past the burst, one change per this long per agent: a flapping member costs each stream 0.5 changes/s. */
export const CHANGE_INTERVAL_MS = 2_000;
/** Buckets kept (one per agent that changed lately); full ones are forgotten first, as new ones start full. */
const MAX_AGENTS = 100_000;

interface Bucket {
  tokens: number;
  at: number;
  /** The change waiting for a token, if any (the latest kind; an upsert stays an upsert). */
  waiting?: { kind: AgentChangeKind; timer: NodeJS.Timeout };
}

/** `send` writes a change now; at a deferred send the agent's current entry is looked up again (it may be gone). */
export class ChangePacer {
  private readonly buckets = new Map<string, Bucket>();
  /** Changes held back past an agent's burst (each later one that replaced a held one included). */
  paced = 0;

  constructor(private readonly send: (network: string, id: string, kind: AgentChangeKind) => void,
    private readonly burst = BURST_CHANGES, private readonly intervalMs = CHANGE_INTERVAL_MS) {}

  offer(network: string, id: string, kind: AgentChangeKind, now = Date.now()): void {
    const key = `${network}\n${id}`;
    let b = this.refill(key, now);
    if (!b) {
      if (this.buckets.size >= MAX_AGENTS) this.evict(now);
      this.buckets.set(key, (b = { tokens: this.burst, at: now }));
    }
    if (b.waiting) {
      this.paced++;
      if (b.waiting.kind !== 'upsert') b.waiting.kind = kind;
      return;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      this.send(network, id, kind);
      return;
    }
    this.paced++;
    const timer = setTimeout(() => this.release(network, id, key), Math.ceil((1 - b.tokens) * this.intervalMs));
    timer.unref();
    b.waiting = { kind, timer };
  }

  /** Drops every held change (the registry is stopping). */
  stop(): void {
    for (const b of this.buckets.values()) if (b.waiting) clearTimeout(b.waiting.timer);
    this.buckets.clear();
  }

  private release(network: string, id: string, key: string): void {
    const b = this.refill(key, Date.now());
    if (!b?.waiting) return;
    const { kind } = b.waiting;
    b.waiting = undefined;
    b.tokens = Math.max(0, b.tokens - 1);
    this.send(network, id, kind);
  }

  private refill(key: string, now: number): Bucket | undefined {
    const b = this.buckets.get(key);
    if (!b) return undefined;
    b.tokens = Math.min(this.burst, b.tokens + Math.max(0, now - b.at) / this.intervalMs);
    b.at = now;
    return b;
  }

  /** Forgets buckets that refilled and hold nothing; if none did, the oldest idle one. */
  private evict(now: number): void {
    for (const [key] of this.buckets) {
      const b = this.refill(key, now)!;
      if (b.tokens >= this.burst && !b.waiting) this.buckets.delete(key);
    }
    if (this.buckets.size < MAX_AGENTS) return;
    for (const [key, b] of this.buckets) {
      if (!b.waiting) {
        this.buckets.delete(key);
        return;
      }
    }
  }
}
