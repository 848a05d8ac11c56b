import { AgentVpnError } from '../errors.js';
import { compilePolicy, grantCovers, PROTO_ICMP, PROTO_TCP, PROTO_UDP, type AgentFacts } from './compile.js';
import { describeGrant, type Policy } from './parse.js';

/** A flow as `policy test` names it: `tcp:8080`, `udp:53`, `icmp`. */
export interface FlowSpec {
  proto: number;
  port: number;
}

export function parseFlowSpec(text: string): FlowSpec {
  if (text === 'icmp') return { proto: PROTO_ICMP, port: 0 };
  const m = /^(tcp|udp):([1-9]\d{0,4})$/.exec(text);
  if (!m || Number(m[2]) > 65535) {
    throw new AgentVpnError('BAD_FLOW', `invalid flow "${text.slice(0, 40)}"`, 'name the flow as tcp:PORT, udp:PORT or icmp, e.g. tcp:8080');
  }
  return { proto: m[1] === 'tcp' ? PROTO_TCP : PROTO_UDP, port: Number(m[2]) };
}

export interface Explanation {
  allow: boolean;
  /** Index of the first grant that allows the flow; null when denied or when there is no policy. */
  grant: number | null;
  /** Why, in a sentence: the deciding grant, or what came closest. */
  text: string;
  /** Grants that cover src -> dst but not this protocol/port (a deny's near misses). */
  near: number[];
}

/**
 * Whether `src` may open `flow` to `dst` under `policy`, and which grant decides. It asks the
 * same compiled rules the filter enforces (dst's inbound view of src), so the two cannot disagree.
 */
export function explain(policy: Policy | null, src: AgentFacts, dst: AgentFacts, flowText: string): Explanation {
  const flow = parseFlowSpec(flowText);
  if (policy === null) return { allow: true, grant: null, text: 'no policy is set: everything is allowed', near: [] };
  const rules = compilePolicy(policy, dst, [src]).byId.get(src.id)!;
  const allow = rules.inbound.allows(flow.proto, flow.port);
  const near: number[] = [];
  for (const i of rules.inboundGrants) {
    const g = policy.grants[i];
    const one = compilePolicy({ grants: [g] }, dst, [src]).byId.get(src.id)!;
    if (one.inbound.allows(flow.proto, flow.port)) {
      return { allow, grant: i, text: `allowed by ${describeGrant(policy, i)}`, near: [] };
    }
    if (grantCovers(g, src, dst)) near.push(i);
  }
  const nearText = near.length ? `; ${near.map((i) => describeGrant(policy, i)).join('; ')} covers ${src.name} -> ${dst.name} but not ${flowText}` : '';
  return { allow: false, grant: null, text: `denied: no grant allows ${src.name} -> ${dst.name} ${flowText}${nearText}`, near };
}
