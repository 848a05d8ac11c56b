import { createHash } from 'node:crypto';
import { clip } from '../audit/entry.js';
import { noAudit, type AuditSink } from '../audit/sink.js';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import type { Logger as PinoLogger } from 'pino';
import { writeFileAtomic } from '../util/atomic-file.js';
import { AgentVpnError } from '../errors.js';
import { compilePolicy, type AgentFacts, type CompiledPolicy } from '../policy/compile.js';
import { PolicyFilter } from '../policy/filter.js';
import { parsePolicy, type Policy } from '../policy/parse.js';
import type { AgentView, PolicyView } from '../registry/client.js';
import { tagsOf } from './admission.js';

/** An admitted agent's record as the policy sees it (tags come from the registry, the rest is signed). */
export function factsOf(view: AgentView): AgentFacts {
  const r = view.record;
  return {
    id: r.id, name: r.name, tags: tagsOf(view), capabilities: r.capabilities,
    ipv4: r.ipv4, ipv6: r.ipv6, wgPublicKey: r.wgPublicKey,
  };
}

/**
 * The network's policy in the fleet: the registry pushes its text, we parse it and compile it for
 * ourselves against the agents admitted now, and the data path's filter enforces it. Recompiled
 * (coalesced to once per event-loop turn) whenever the policy or the admitted agents change;
 * sessions are never touched. No policy = everything allowed. The last policy is kept in the
 * state dir, so after a restart it is enforced before the registry answers (not "allow all").
 */
export class FleetPolicy {
  readonly filter = new PolicyFilter();
  private policy: Policy | null = null;
  private view: PolicyView | null = null;
  private compiled: CompiledPolicy | null = null;
  private pending: NodeJS.Immediate | null = null;

  constructor(
    private readonly facts: () => { self: AgentFacts; peers: AgentFacts[] },
    private readonly log: PinoLogger,
    private readonly file: string,
    private readonly audit: AuditSink = noAudit,
  ) {
    try {
      if (existsSync(file)) this.set(JSON.parse(readFileSync(file, 'utf8')) as PolicyView);
    } catch (e) {
      log.warn({ file, err: (e as Error).message }, 'cannot read the saved policy; waiting for the registry\'s');
    }
  }

  /**
   * The registry's policy (null: none), as its event stream gives it: in order, and as a whole in
   * every snapshot, so the newest word counts even when versions restart (a restored registry).
   * One that does not parse keeps the policy in force.
   */
  set(view: PolicyView | null): void {
    if (view && this.view && view.version === this.view.version && view.policy === this.view.policy) return;
    const news = view !== null || this.view !== null;
    try {
      this.policy = view ? parsePolicy(view.policy) : null;
      this.view = view;
      if (news) this.audit('policy.changed', 'policy', view ? { version: view.version, sha256: sha256Hex(view.policy) } : { version: null });
      this.save(view);
      this.log.info({ version: view?.version ?? null, event: 'policy' }, view ? `policy version ${view.version} in force` : 'no policy: every agent may reach every port');
      this.changed();
    } catch (e) {
      const err = e as AgentVpnError;
      this.log.error({ version: view?.version, err: err.message }, 'the registry sent a policy that does not parse; keeping the policy in force');
      this.audit('policy.refused', 'policy', { version: view?.version ?? null, message: clip(err.message) });
    }
  }

  private save(view: PolicyView | null): void {
    try {
      if (view) writeFileAtomic(this.file, JSON.stringify({ version: view.version, policy: view.policy }));
      else rmSync(this.file, { force: true });
    } catch (e) {
      this.log.warn({ file: this.file, err: (e as Error).message }, 'cannot save the policy in the state dir');
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

function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
