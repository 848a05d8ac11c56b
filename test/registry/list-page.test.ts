import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { agentIdOf } from '../../src/identity/agent-id.js';
import { parseCapability } from '../../src/net/capabilities.js';
import { Entry, NetworkState } from '../../src/registry/fleet-state.js';
import { MAX_PAGE_SIZE, listPage, parsePageRequest, type ListFilter } from '../../src/registry/list-page.js';
import type { AgentView } from '../../src/registry/protocol.js';

const AGENTS = 10_000;

function viewOf(id: string, i: number, capabilities: string[]): AgentView {
  return {
    record: {
      v: 1, network: 'n', id, name: `agent-${i}`, wgPublicKey: 'x', ipv4: '100.64.0.1', ipv6: 'fd00::1', endpoints: [],
      capabilities, seq: 1, issuedAt: 0, expiresAt: 1,
    },
    signature: 's', online: i % 2 === 0, lastSeen: 0,
  };
}

const capsOf = (i: number) => [`svc.s${i % 100}`, `llm.inference@1;model=m${i % 10}`];

function fleetOf(n: number): { state: NetworkState; ids: string[] } {
  const state = new NetworkState();
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const id = agentIdOf(randomBytes(32));
    ids.push(id);
    state.byName.set(`agent-${i}`, id);
    state.setAgent(id, new Entry(viewOf(id, i, capsOf(i))));
  }
  return { state, ids };
}

const filter = (cap: string | null, over: Partial<ListFilter> = {}): ListFilter => ({ cap: cap === null ? null : parseCapability(cap), name: null, online: null, ...over });

/** Walks every page; returns the IDs in the order they came. */
function walk(state: NetworkState, f: ListFilter, limit: number, between?: (page: number) => void): string[] {
  const out: string[] = [];
  let after: string | null = null;
  for (let page = 0; ; page++) {
    const p = listPage(state, f, { limit, after });
    out.push(...p.agents.map((e) => e.view.record.id));
    if (p.next === null) return out;
    after = p.next;
    between?.(page);
  }
}

describe('agent lists: capability index and pages', () => {
  it('a query naming an attribute walks only the agents filed under it (1,000 of 10,000, not every llm.inference agent)', () => {
    const { state } = fleetOf(AGENTS);
    const query = filter('llm.inference;model=m3');
    const walked = state.candidateIds(query.cap).ids.length;
    const t0 = performance.now();
    const page = listPage(state, query, { limit: MAX_PAGE_SIZE, after: null });
    const ms = performance.now() - t0;
    console.log(`capability list of ${page.agents.length} among ${AGENTS}: ${walked} candidates walked (an index by name alone walks ${state.candidateIds(filter('llm.inference').cap).ids.length}), ${ms.toFixed(1)} ms`);
    expect(walked).toBe(AGENTS / 10);
    expect(page.agents).toHaveLength(AGENTS / 10);
    expect(page.next).toBeNull();
    expect(state.candidateIds(filter('llm.inference@1;model=m3').cap)).toMatchObject({ exact: false });
    expect(state.candidateIds(filter('llm.inference@1;model=m3').cap).ids).toHaveLength(AGENTS / 10);
    expect(state.candidateIds(query.cap).exact).toBe(true);
    expect(state.candidateIds(filter('llm.inference@2').cap).ids).toHaveLength(0);
    expect(state.candidateIds(filter('llm.inference;model=nope').cap).ids).toHaveLength(0);
  });

  it('pages come in ID order, each agent once, also while agents join and leave mid-walk', () => {
    const { state, ids } = fleetOf(2_000);
    const all = walk(state, filter(null), 150);
    expect(all).toEqual([...ids].sort());
    const matching = walk(state, filter('svc.s7', { online: false }), 3);
    expect(matching).toEqual(ids.filter((_, i) => i % 100 === 7 && i % 2 === 1).sort());

    const before = new Set(ids);
    let removed = 0;
    const seen = walk(state, filter(null), 100, (page) => {
      // An agent leaves and a new one joins between two pages.
      state.removeMember(ids[page * 7]);
      removed++;
      const id = agentIdOf(randomBytes(32));
      state.setAgent(id, new Entry(viewOf(id, 1, capsOf(1))));
    });
    expect(new Set(seen).size).toBe(seen.length); // no agent twice
    expect([...seen].sort()).toEqual(seen); // in order
    // Every agent present for the whole walk was seen.
    const stayed = [...before].filter((id) => state.agents.has(id));
    expect(stayed.every((id) => seen.includes(id))).toBe(true);
    console.log(`walk of 2,000 agents in pages of 100 with ${removed} leaving and ${removed} joining: ${seen.length} seen, none twice`);
  });

  it('a name filter looks at the name\'s holder only; a republish with the same capabilities keeps the sorted order cached', () => {
    const { state, ids } = fleetOf(100);
    expect(listPage(state, filter(null, { name: 'agent-5' }), { limit: 10, after: null }).agents.map((e) => e.view.record.id)).toEqual([ids[5]]);
    expect(listPage(state, filter('svc.s6', { name: 'agent-5' }), { limit: 10, after: null }).agents).toEqual([]);
    const sorted = state.candidateIds(filter('svc.s5').cap).ids;
    state.setAgent(ids[5], new Entry(viewOf(ids[5], 5, capsOf(5))));
    expect(state.candidateIds(filter('svc.s5').cap).ids).toBe(sorted);
    state.setAgent(ids[5], new Entry(viewOf(ids[5], 5, ['svc.other'])));
    expect(state.candidateIds(filter('svc.s5').cap).ids).toHaveLength(0); // its only member moved away: the key is gone
    expect(state.candidateIds(filter('svc.other').cap).ids).toEqual([ids[5]]);
  });

  it('a query naming two parts checks each candidate: parts held by two different capabilities do not match', () => {
    const state = new NetworkState();
    const mixed = agentIdOf(randomBytes(32));
    const real = agentIdOf(randomBytes(32));
    state.setAgent(mixed, new Entry(viewOf(mixed, 1, ['llm.inference@2;model=m3', 'llm.inference@1;model=m4'])));
    state.setAgent(real, new Entry(viewOf(real, 2, ['llm.inference@1;model=m3'])));
    const names = (cap: string) => listPage(state, filter(cap), { limit: 10, after: null }).agents.map((e) => e.view.record.id).sort();
    expect(names('llm.inference@1;model=m3')).toEqual([real]);
    expect(names('llm.inference;model=m3')).toEqual([mixed, real].sort());
    expect(names('llm.inference@1')).toEqual([mixed, real].sort());
  });

  it('refuses a bad limit or cursor', () => {
    const req = (q: string) => parsePageRequest(new URL(`http://r/v1/agents?${q}`));
    expect(req('')).toEqual({ limit: MAX_PAGE_SIZE, after: null });
    expect(req('limit=5').limit).toBe(5);
    for (const q of ['limit=0', `limit=${MAX_PAGE_SIZE + 1}`, 'limit=-1', 'limit=1e3', 'limit=abc', 'cursor=not-an-id']) {
      expect(() => req(q), q).toThrow(/limit|cursor/);
    }
  });
});
