/**
 * One network's change history, as far as its event streams need it to resume (events.ts): the
 * sequence number of its latest change (agents are stamped with theirs), and what no pass over
 * the agent map can show: the removals since a point (kept for the last MAX_REMOVALS), and
 * whether the policy changed since.
 */
export class StreamHistory {
  private last = 0;
  /** Recent removals as frames without an id, oldest first. */
  private readonly removals: Array<{ seq: number; frame: string }> = [];
  /** Every removal after this sequence number is still in `removals`. */
  private keptAfter = 0;
  private policySeq = 0;

  get seq(): number {
    return this.last;
  }

  /** The sequence number of an agent's change. */
  changed(): number {
    return ++this.last;
  }

  removed(frame: string): number {
    this.removals.push({ seq: ++this.last, frame });
    if (this.removals.length > MAX_REMOVALS) this.keptAfter = this.removals.shift()!.seq;
    return this.last;
  }

  policyChanged(): number {
    return (this.policySeq = ++this.last);
  }

  /** What happened after `from` besides agent changes; null when the history no longer reaches back that far (or `from` is ahead). */
  since(from: number): { removals: string[]; policyChanged: boolean } | null {
    if (from < this.keptAfter || from > this.last) return null;
    return { removals: this.removals.filter((r) => r.seq > from).map((r) => r.frame), policyChanged: this.policySeq > from };
  }
}

/** Removals a resume can bridge (~50 B each): more between a disconnect and its reconnect, and the stream starts from a snapshot. */
const MAX_REMOVALS = 4096;
