import { parseCapability, type Capability } from '../net/capabilities.js';
import { agentIdOf } from '../identity/agent-id.js';
import type { KeyStatement } from '../identity/rotation.js';
import type { AgentView } from './protocol.js';
import type { HeldChain } from './key-chain.js';
import { canonicalRecord } from './record.js';
import { CapabilityIndex, IdSet } from './capability-index.js';
import type { Member, StoredPolicy } from './store.js';

/**
 * The registry's view of each network in memory: members, names, and one entry per agent
 * that published, kept as the signed canonical record only (nothing unsigned is served).
 */
export class Entry {
  readonly caps: Capability[];
  /** Liveness changed since it was last written to the store. */
  dirty = false;
  /** Stamped by the event hub when it publishes a change of this entry (events.ts: the catch-up). */
  eventSeq = 0;
  private current: AgentView;
  private encoded: string | undefined;

  /** `tags`: the member's (from its join token); `chain`: its key chain, when it rotated its key. */
  constructor(view: AgentView) {
    this.current = {
      record: canonicalRecord(view.record), signature: view.signature, online: view.online, lastSeen: view.lastSeen,
      tags: [...(view.tags ?? [])], ...(view.chain ? { chain: view.chain } : {}),
    };
    this.caps = parseCaps(this.current.record.capabilities);
  }

  get view(): AgentView {
    return this.current;
  }

  /** `persisted`: the store already holds this liveness (signed heartbeats and leaves write it at once). */
  setLiveness(online: boolean, lastSeen: number, persisted = false): void {
    this.current = { ...this.current, online, lastSeen };
    this.encoded = undefined;
    this.dirty = !persisted;
  }

  /** The view as JSON, encoded once per change and shared by every list and stream that sends it. */
  get json(): string {
    return (this.encoded ??= JSON.stringify(this.current));
  }
}

export class NetworkState {
  readonly members = new Map<string, Member>();
  readonly byName = new Map<string, string>();
  /**
   * A live iterator over this map (an event-stream snapshot) stays valid when an agent is
   * removed: a Map iterator skips entries deleted before it reaches them.
   */
  readonly agents = new Map<string, Entry>();
  /** IDs an operator blocked: refused before any signature is checked. */
  readonly blocked = new Set<string>();
  private currentPolicy: StoredPolicy | null = null;
  private policyText = 'null';
  /** Capability parts → IDs of the agents that have them, so a filtered list does not scan every agent. */
  private readonly byCap = new CapabilityIndex();
  /** Every agent with a record, for unfiltered lists in ID order. */
  private readonly all = new IdSet();

  setAgent(id: string, entry: Entry): void {
    this.byCap.replace(id, this.agents.get(id)?.caps ?? [], entry.caps);
    this.agents.set(id, entry);
    this.all.add(id);
  }

  /**
   * The IDs a capability query can match (every agent's without a query), in ascending order:
   * what a page of a list walks from its cursor. Unless `exact`, the caller checks each against the query.
   */
  candidateIds(cap: Capability | null): { ids: readonly string[]; exact: boolean } {
    if (!cap) return { ids: this.all.sorted(), exact: true };
    const found = this.byCap.candidates(cap);
    return found ? { ids: found.ids.sorted(), exact: found.exact } : { ids: [], exact: true };
  }

  /** Forgets a member and its record (an operator removed it); returns whether it was here. */
  removeMember(id: string): boolean {
    const m = this.members.get(id);
    this.byCap.replace(id, this.agents.get(id)?.caps ?? [], []);
    this.all.delete(id);
    const had = this.agents.delete(id) || m !== undefined;
    this.members.delete(id);
    if (m && this.byName.get(m.name) === id) this.byName.delete(m.name);
    return had;
  }

  /** The network's policy, or null (no policy: everything is allowed). */
  get policy(): StoredPolicy | null {
    return this.currentPolicy;
  }

  setPolicy(p: StoredPolicy): void {
    this.currentPolicy = p;
    this.policyText = JSON.stringify({ version: p.version, policy: p.text });
  }

  /** The policy as the JSON of a 'policy' event and of a snapshot's "policy" field, encoded once per version. */
  get policyJson(): string {
    return this.policyText;
  }

  setMember(m: Member): void {
    const old = this.members.get(m.id);
    if (old && old.name !== m.name && this.byName.get(old.name) === m.id) this.byName.delete(old.name);
    this.members.set(m.id, m);
    this.byName.set(m.name, m.id);
  }
}

/** Every network the registry knows, created on first use. */
export class Fleet {
  readonly networks = new Map<string, NetworkState>();

  /** The network's state, created if new. */
  net(name: string): NetworkState {
    let s = this.networks.get(name);
    if (!s) this.networks.set(name, (s = new NetworkState()));
    return s;
  }

  /**
   * Agents that rotated their key (by ID, in every network): the current Ed25519 key they sign
   * with, and the chain that proves it. The others sign with the key their ID encodes.
   */
  readonly rotated = new Map<string, HeldChain>();
  /** Current key (base64) → agent ID, for agents that rotated. */
  private readonly ownerOfKey = new Map<string, string>();

  /** The key agent `id` signs with now (undefined: the one its ID encodes). */
  currentKey(id: string): Uint8Array | undefined {
    return this.rotated.get(id)?.key;
  }

  /** Agent `id` rotated to `key`, proven by `chain` (already verified). */
  setRotated(id: string, key: Uint8Array, chain: KeyStatement[]): void {
    const old = this.rotated.get(id);
    if (old) this.ownerOfKey.delete(Buffer.from(old.key).toString('base64'));
    this.rotated.set(id, { key, chain });
    this.ownerOfKey.set(Buffer.from(key).toString('base64'), id);
  }

  /**
   * The agent whose current key `key` is, or null: the relay's question. A key an agent rotated
   * away from (its ID's own key included) belongs to no one any more.
   */
  agentOfKey(key: Uint8Array): string | null {
    const owner = this.ownerOfKey.get(Buffer.from(key).toString('base64'));
    if (owner !== undefined) return owner;
    const id = agentIdOf(key);
    return this.rotated.has(id) ? null : id;
  }

  isMember(network: string, id: string): boolean {
    return this.networks.get(network)?.members.has(id) ?? false;
  }

  isBlocked(network: string, id: string): boolean {
    return this.networks.get(network)?.blocked.has(id) ?? false;
  }
}

function parseCaps(caps: readonly string[]): Capability[] {
  const out: Capability[] = [];
  for (const c of caps) {
    try {
      out.push(parseCapability(c));
    } catch {
      // verifyRecord admits only canonical capabilities; skip anything else defensively.
    }
  }
  return out;
}
