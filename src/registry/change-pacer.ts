import { KeyedBudget, monotonicMs } from '../util/token-bucket.js';
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

/** A change waiting for the agent's next token: the latest kind (an upsert stays an upsert). */
interface Waiting {
  kind: AgentChangeKind;
  timer: NodeJS.Timeout;
}

/** `send` writes a change now; at a deferred send the agent's current entry is looked up again (it may be gone). */
export class ChangePacer {
  private readonly budget: KeyedBudget;
  private readonly waiting = new Map<string, Waiting>();
  /** Changes held back past an agent's burst (each later one that replaced a held one included). */
  paced = 0;

  constructor(private readonly send: (network: string, id: string, kind: AgentChangeKind) => void, burst = BURST_CHANGES, intervalMs = CHANGE_INTERVAL_MS) {
    this.budget = new KeyedBudget(1000 / intervalMs, burst);
  }

  offer(network: string, id: string, kind: AgentChangeKind, now = monotonicMs()): void {
    const key = `${network}\n${id}`;
    const held = this.waiting.get(key);
    if (held) {
      this.paced++;
      if (held.kind !== 'upsert') held.kind = kind;
      return;
    }
    if (this.budget.tokens(key, now) >= 1) {
      this.budget.spend(key, 1, now);
      this.send(network, id, kind);
      return;
    }
    this.paced++;
    const timer = setTimeout(() => this.release(network, id, key), Math.ceil(this.budget.waitMs(key, 1, now)));
    timer.unref();
    this.waiting.set(key, { kind, timer });
  }

  /** Drops every held change (the registry is stopping). */
  stop(): void {
    for (const w of this.waiting.values()) clearTimeout(w.timer);
    this.waiting.clear();
  }

  private release(network: string, id: string, key: string): void {
    const held = this.waiting.get(key);
    if (!held) return;
    this.waiting.delete(key);
    this.budget.spend(key, 1, monotonicMs());
    this.send(network, id, held.kind);
  }
}
