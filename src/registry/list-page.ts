import { capabilityMatches, type Capability } from '../net/capabilities.js';
import type { Entry, NetworkState } from './fleet-state.js';
import { refuse } from './refusals.js';
import { isAgentId } from './request-auth.js';

/**
 * One page of GET /v1/agents. Agents come in ascending order of their ID, so pages are stable
 * while agents come and go: an agent that joins after the page its ID falls on was read is
 * simply not seen by that walk, and no agent is seen twice.
 *
 * | query parameter | meaning                                                               |
 * | --------------- | --------------------------------------------------------------------- |
 * | `limit`         | at most this many agents (1…MAX_PAGE_SIZE; default MAX_PAGE_SIZE)     |
 * | `cursor`        | the `next` of the page before (opaque to clients): start after it     |
 *
 * The answer's `next` is present when more agents may follow; a walk ends at a page without it.
 */

/**
 * A page holds at most this many agents (~1 MB of JSON): one request's work and answer stay
 * bounded whatever the network's size, and a capability that ~1,000 agents offer is one page.
 */
export const MAX_PAGE_SIZE = 1_000;

export interface ListFilter {
  cap: Capability | null;
  name: string | null;
  online: boolean | null;
}

export interface PageRequest {
  limit: number;
  /** Start after this agent ID (null: from the first). */
  after: string | null;
}

/** `limit` and `cursor` from the query string; refuses bad values. */
export function parsePageRequest(url: URL): PageRequest {
  const limitText = url.searchParams.get('limit');
  let limit = MAX_PAGE_SIZE;
  if (limitText !== null) {
    if (!/^[0-9]{1,7}$/.test(limitText) || Number(limitText) < 1 || Number(limitText) > MAX_PAGE_SIZE) {
      refuse('BAD_REQUEST', `limit must be an integer from 1 to ${MAX_PAGE_SIZE}`);
    }
    limit = Number(limitText);
  }
  const after = url.searchParams.get('cursor');
  if (after !== null && !isAgentId(after)) refuse('BAD_REQUEST', 'invalid cursor (pass the "next" of the previous page)');
  return { limit, after };
}

/** First index in `sorted` whose ID is greater than `after` (binary search). */
function firstAfter(sorted: readonly string[], after: string | null): number {
  if (after === null) return 0;
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid] <= after) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The page of `state`'s agents that match `filter`. Costs O(log n) to find the cursor plus the
 * candidates walked: only agents filed under the query's rarest capability part, or the name's
 * holder alone, are looked at.
 */
export function listPage(state: NetworkState | undefined, filter: ListFilter, page: PageRequest): { agents: Entry[]; next: string | null } {
  if (!state) return { agents: [], next: null };
  let ids: readonly string[];
  let check = filter.cap;
  if (filter.name !== null) {
    // The name's current holder only: a record signed before its agent renamed still carries the old name.
    const holder = state.byName.get(filter.name);
    ids = holder === undefined || !state.agents.has(holder) ? [] : [holder];
  } else {
    const found = state.candidateIds(filter.cap);
    ids = found.ids;
    if (found.exact) check = null;
  }
  const agents: Entry[] = [];
  let i = firstAfter(ids, page.after);
  for (; i < ids.length && agents.length < page.limit; i++) {
    const e = state.agents.get(ids[i]);
    if (!e) continue;
    if (filter.online !== null && e.view.online !== filter.online) continue;
    if (check && !e.caps.some((c) => capabilityMatches(check, c))) continue;
    agents.push(e);
  }
  return { agents, next: i < ids.length ? ids[i - 1] : null };
}
