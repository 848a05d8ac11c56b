import type { Logger as PinoLogger } from 'pino';
import { AgentVpnError } from '../errors.js';
import { compilePolicy, type AgentFacts, type CompiledPolicy } from '../policy/compile.js';
import { PolicyFilter } from '../policy/filter.js';
import { parsePolicy, type Policy } from '../policy/parse.js';
import type { AgentView, PolicyView } from '../registry/client.js';

/** An admitted agent's record as the policy sees it (tags come from the registry, the rest is signed). */
export function factsOf(view: AgentView): AgentFacts {
  const r = view.record;
  return {
    id: r.id, name: r.name, tags: (view as { tags?: string[] }).tags ?? [], capabilities: r.capabilities,
    ipv4: r.ipv4, ipv6: r.ipv6, wgPublicKey: r.wgPublicKey,
  };
}

/**
 * The network's policy in the fleet: the registry pushes its text, we parse it and compile it for
 * ourselves against the agents admitted now, and the data path's filter enforces it. Recompiled
 * (coalesced to once per event-loop turn) whenever the policy or the admitted agents change;
 * sessions are never touched. No policy = everything allowed.
 */
export class FleetPolicy {
  readonly filter = new PolicyFilter();
  private policy: Policy | null = null;
  private view: PolicyView | null = null;
  private compiled: CompiledPolicy | null = null;
  private pending: NodeJS.Immediate | null = null;

  constructor(private readonly facts: () => { self: AgentFacts; peers: AgentFacts[] }, private readonly log: PinoLogger) {}

  /** A policy from the registry (null: none). One that does not parse keeps the policy in force. */
  set(view: PolicyView | null): void {
    if (view && this.view && view.version <= this.view.version) return;
    try {
      this.policy = view ? parsePolicy(view.policy) : null;
      this.view = view;
      this.log.info({ version: view?.version ?? null, event: 'policy' }, view ? `policy version ${view.version} in force` : 'no policy: every agent may reach every port');
      this.changed();
    } catch (e) {
      const err = e as AgentVpnError;
      this.log.error({ version: view?.version, err: err.message }, 'the registry sent a policy that does not parse; keeping the policy in force');
    }
  }

  /** The admitted agents changed: recompile soon. */
  changed(): void {
    this.pending ??= setImmediate(() => {
      this.pending = null;
      const { self, peers } = this.facts();
      this.compiled = compilePolicy(this.policy, self, peers);
      this.filter.setPolicy(this.compiled);
    });
  }

  /** The app capabilities an agent's grants give it toward us. */
  appOf(id: string): Record<string, unknown[]> {
    return this.compiled?.byId.get(id)?.app ?? {};
  }

  /** The policy in force, for `agentvpn policy test` (text as the operator wrote it). */
  text(): string | null {
    return this.view?.policy ?? null;
  }

  stop(): void {
    if (this.pending) clearImmediate(this.pending);
    this.pending = null;
  }
}
