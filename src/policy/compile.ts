import { capabilityMatches, parseCapability, type Capability } from '../net/capabilities.js';
import type { JsonValue } from './jsonc.js';
import type { Grant, IpEntry, Policy, Selector } from './parse.js';

/** What the policy needs to know about an agent (from its verified record, or static mode's "agents"). */
export interface AgentFacts {
  id: string;
  name: string;
  tags: string[];
  capabilities: string[];
  ipv4: string;
  ipv6: string;
  /** WireGuard public key (base64): how the packet filter knows which peer is which agent. */
  wgPublicKey: string;
}

/** IP protocol numbers the filter tells apart. */
export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_ICMPV6 = 58;

/**
 * Ports (or protocols) one peer may use in one direction: sorted, merged inclusive ranges
 * [low0, high0, low1, high1, ...] per protocol, so a check is a short scan of a typed array.
 */
export class PortSet {
  anyProtocol = false;
  icmp = false;
  tcp = new Uint16Array(0);
  udp = new Uint16Array(0);

  /** Whether a new flow of `proto` to `port` is allowed (`proto` as grants name it: ICMPv6 comes as PROTO_ICMP). */
  allows(proto: number, port: number): boolean {
    if (this.anyProtocol) return true;
    if (proto === PROTO_TCP) return inRanges(this.tcp, port);
    if (proto === PROTO_UDP) return inRanges(this.udp, port);
    if (proto === PROTO_ICMP) return this.icmp;
    return false;
  }
}

function inRanges(r: Uint16Array, port: number): boolean {
  for (let i = 0; i < r.length; i += 2) if (port >= r[i] && port <= r[i + 1]) return true;
  return false;
}

/** Unions ip entries into a PortSet (overlapping and adjacent ranges merged). */
export function portSetOf(entries: IpEntry[]): PortSet {
  const set = new PortSet();
  const ranges: Record<'tcp' | 'udp', Array<[number, number]>> = { tcp: [], udp: [] };
  for (const e of entries) {
    if (e.proto === 'any') set.anyProtocol = true;
    else if (e.proto === 'icmp') set.icmp = true;
    else ranges[e.proto].push([e.low, e.high]);
  }
  for (const proto of ['tcp', 'udp'] as const) {
    const sorted = ranges[proto].sort((a, b) => a[0] - b[0]);
    const merged: number[] = [];
    for (const [lo, hi] of sorted) {
      const n = merged.length;
      if (n > 0 && lo <= merged[n - 1] + 1) merged[n - 1] = Math.max(merged[n - 1], hi);
      else merged.push(lo, hi);
    }
    set[proto] = Uint16Array.from(merged);
  }
  return set;
}

/** What self's policy says about one peer. */
export interface PeerRules {
  id: string;
  name: string;
  /** Flows the peer may open to self. */
  inbound: PortSet;
  /** Flows self may open to the peer. */
  outbound: PortSet;
  /** Indices of the grants that give `inbound` / `outbound` (for explanations). */
  inboundGrants: number[];
  outboundGrants: number[];
  /** App capabilities the peer's grants give it toward self: name -> the values of every such grant. */
  app: Record<string, JsonValue[]>;
}

/** The compiled policy the filter enforces; `enforcing` false = no policy = allow all. */
export interface CompiledPolicy {
  enforcing: boolean;
  /** By agent ID (whois) and by WireGuard key (the packet filter). */
  byId: Map<string, PeerRules>;
  byWgKey: Map<string, PeerRules>;
}

/** An agent's capabilities parsed once, so selectors do not parse them for every grant. */
interface Subject {
  facts: AgentFacts;
  caps: Capability[];
}

function subjectOf(facts: AgentFacts): Subject {
  const caps: Capability[] = [];
  for (const c of facts.capabilities) {
    try {
      caps.push(parseCapability(c));
    } catch {
      // A capability that does not parse matches no selector.
    }
  }
  return { facts, caps };
}

function selects(sel: Selector, s: Subject): boolean {
  switch (sel.kind) {
    case 'any': return true;
    case 'name': return s.facts.name === sel.name;
    case 'tag': return s.facts.tags.includes(sel.tag);
    case 'cap': return s.caps.some((c) => capabilityMatches(sel.cap, c));
  }
}

/** Whether a grant covers traffic from `src` to `dst`. */
export function grantCovers(g: Grant, src: AgentFacts, dst: AgentFacts): boolean {
  const a = subjectOf(src);
  const b = subjectOf(dst);
  return g.src.some((s) => selects(s, a)) && g.dst.some((s) => selects(s, b));
}

/**
 * What `self` allows in from each peer and out to each peer: grants are a union; no policy (null)
 * allows everything. Done once per change, never per packet: selectors are matched only for
 * grants that name self, and the port sets are built once per distinct set of grants (peers
 * selected by the same tags, capabilities or `*` share them), so a fleet costs little more than
 * its distinct roles.
 */
export function compilePolicy(policy: Policy | null, self: AgentFacts, peers: AgentFacts[]): CompiledPolicy {
  const byId = new Map<string, PeerRules>();
  const byWgKey = new Map<string, PeerRules>();
  const me = subjectOf(self);
  const grants = policy?.grants ?? [];
  const toMe = grants.flatMap((g, i) => (g.dst.some((s) => selects(s, me)) ? [i] : []));
  const fromMe = grants.flatMap((g, i) => (g.src.some((s) => selects(s, me)) ? [i] : []));
  const sets = new Map<string, PortSet>();
  const portSetFor = (indices: number[]): PortSet => {
    const key = indices.join(',');
    let set = sets.get(key);
    if (set === undefined) {
      set = portSetOf(indices.flatMap((i) => grants[i].ip));
      sets.set(key, set);
    }
    return set;
  };
  for (const facts of peers) {
    const peer = subjectOf(facts);
    const inboundGrants = toMe.filter((i) => grants[i].src.some((s) => selects(s, peer)));
    const outboundGrants = fromMe.filter((i) => grants[i].dst.some((s) => selects(s, peer)));
    const app: Record<string, JsonValue[]> = Object.create(null);
    for (const i of inboundGrants) {
      for (const [name, value] of Object.entries(grants[i].app ?? {})) (app[name] ??= []).push(value);
    }
    const rules: PeerRules = {
      id: facts.id, name: facts.name, inbound: portSetFor(inboundGrants), outbound: portSetFor(outboundGrants), inboundGrants, outboundGrants, app,
    };
    byId.set(facts.id, rules);
    byWgKey.set(facts.wgPublicKey, rules);
  }
  return { enforcing: policy !== null, byId, byWgKey };
}
