import type { Capability } from '../net/capabilities.js';

/**
 * Which agents have which capability, so a filtered list touches only the agents that can match.
 * An agent is filed under one key per part a query can name:
 *
 * | key                 | filed for every capability…      | e.g.                       |
 * | ------------------- | -------------------------------- | -------------------------- |
 * | `name`              | by its name                      | `llm.inference`            |
 * | `name@version`      | that has a version               | `llm.inference@1`          |
 * | `name;key=value`    | per attribute                    | `llm.inference;model=m3`   |
 *
 * A query's candidates are the smallest set among the keys it names (every match is in each of
 * them); the caller still checks each candidate with capabilityMatches. Each set keeps its IDs
 * sorted on demand (cached until the set changes), so pages come out in a stable order: by ID.
 */
export class IdSet {
  private readonly ids = new Set<string>();
  private sortedIds: string[] | null = [];

  get size(): number {
    return this.ids.size;
  }

  add(id: string): void {
    if (this.ids.has(id)) return;
    this.ids.add(id);
    this.sortedIds?.splice(this.position(id), 0, id);
  }

  delete(id: string): void {
    if (this.ids.delete(id)) this.sortedIds?.splice(this.position(id), 1);
  }

  /**
   * The IDs in ascending order, sorted once and then kept in order by each change (a move of
   * memory, no sort): a member that churns its capabilities cannot make every list re-sort.
   */
  sorted(): readonly string[] {
    return (this.sortedIds ??= [...this.ids].sort());
  }

  /** Where `id` is, or would go, in the sorted array (binary search). */
  private position(id: string): number {
    const a = this.sortedIds!;
    let lo = 0;
    let hi = a.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (a[mid] < id) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** The index keys an agent's capability is filed under (the table above). */
export function indexKeys(c: Capability): string[] {
  const keys = [c.name];
  if (c.version !== undefined) keys.push(`${c.name}@${c.version}`);
  for (const [k, v] of Object.entries(c.attrs)) keys.push(`${c.name};${k}=${v}`);
  return keys;
}

export class CapabilityIndex {
  private readonly byKey = new Map<string, IdSet>();

  /**
   * Files `id` under `now` in place of `before` (its previous record's capabilities). Keys both
   * hold are left alone, so a republish with the same capabilities keeps every sorted cache.
   * An emptied key is dropped: keys never outnumber what agents hold now.
   */
  replace(id: string, before: readonly Capability[], now: readonly Capability[]): void {
    const kept = new Set(now.flatMap(indexKeys));
    for (const key of before.flatMap(indexKeys)) {
      if (kept.has(key)) continue;
      const set = this.byKey.get(key);
      if (!set) continue;
      set.delete(id);
      if (set.size === 0) this.byKey.delete(key);
    }
    for (const key of kept) {
      let set = this.byKey.get(key);
      if (!set) this.byKey.set(key, (set = new IdSet()));
      set.add(id);
    }
  }

  /**
   * The smallest set that holds every agent `query` can match (null when a key it names is
   * unknown). `exact`: every agent in it matches, so no candidate needs checking: a query that
   * names at most one part beside the name is answered by that part's key alone.
   */
  candidates(query: Capability): { ids: IdSet; exact: boolean } | null {
    const keys = indexKeys(query);
    let best: IdSet | null = null;
    for (const key of keys) {
      const set = this.byKey.get(key);
      if (!set) return null;
      if (!best || set.size < best.size) best = set;
    }
    const exact = keys.length === 1 || (keys.length === 2 && best === this.byKey.get(keys[1]));
    return { ids: best!, exact };
  }
}
