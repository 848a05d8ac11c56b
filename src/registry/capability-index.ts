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
 * sorted on demand (changes merged in when asked), so pages come out in a stable order: by ID.
 */
export class IdSet {
  private readonly ids = new Set<string>();
  /** The IDs in ascending order as of the last merge; some may have been deleted since. */
  private sortedIds: string[] = [];
  /** IDs added since the last merge, unsorted (an ID added, deleted and added again is here twice). */
  private added: string[] = [];
  /** Whether an ID was deleted since the last merge. */
  private deleted = false;

  get size(): number {
    return this.ids.size;
  }

  add(id: string): void {
    if (this.ids.has(id)) return;
    this.ids.add(id);
    this.added.push(id);
    // Bounded: a member that churns its capabilities cannot grow `added` past the set's size.
    if (this.added.length > Math.max(MIN_UNMERGED, this.ids.size)) this.merge();
  }

  delete(id: string): void {
    if (this.ids.delete(id)) this.deleted = true;
  }

  /**
   * The IDs in ascending order. Changes are merged in on demand: the IDs added since are sorted
   * among themselves and merged with the sorted array (O(n + k log k) for k changes, no re-sort of
   * the whole set), so adding costs O(1) and a member that churns its capabilities cannot make
   * every list re-sort. A returned array is never changed afterwards.
   */
  sorted(): readonly string[] {
    if (this.added.length > 0 || this.deleted) this.merge();
    return this.sortedIds;
  }

  private merge(): void {
    const ids = this.ids;
    const old = this.deleted ? this.sortedIds.filter((id) => ids.has(id)) : this.sortedIds;
    const fresh = this.added.filter((id) => ids.has(id)).sort();
    const out: string[] = [];
    let i = 0;
    let j = 0;
    // Both runs are sorted; an ID in both (deleted, then added again), or twice in `fresh`, is kept once.
    while (i < old.length || j < fresh.length) {
      const next = j >= fresh.length || (i < old.length && old[i] <= fresh[j]) ? old[i++] : fresh[j++];
      if (out.length === 0 || out[out.length - 1] !== next) out.push(next);
    }
    this.sortedIds = out;
    this.added = [];
    this.deleted = false;
  }
}

/** Below this many unmerged additions a set does not merge before it is asked for its order. */
const MIN_UNMERGED = 1024;

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
    const keys = now.flatMap(indexKeys);
    if (before.length > 0) {
      const kept = new Set(keys);
      for (const key of before.flatMap(indexKeys)) {
        if (kept.has(key)) continue;
        const set = this.byKey.get(key);
        if (!set) continue;
        set.delete(id);
        if (set.size === 0) this.byKey.delete(key);
      }
    }
    // A key named twice (two versions of one capability) is added once: IdSet.add ignores the second.
    for (const key of keys) {
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
