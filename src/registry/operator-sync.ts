import type { Logger } from 'pino';
import type { AdminTokens } from './admin-auth.js';
import type { EventHub } from './events.js';
import type { Fleet } from './fleet-state.js';
import type { RegistryEvents } from './registry-log.js';
import type { OperatorAction, RegistryStore } from './store.js';

/**
 * Brings operator actions into the running registry's memory, wherever they were taken (the
 * CLI on the database, the admin API here): the server polls each sweep (SWEEP_INTERVAL_MS), so
 * a removal reaches every agent's event stream within about a second. Actions apply once each,
 * in order, one poll at a time. Each poll then has the registry's own audit log catch up with the
 * actions (registry-log.ts keeps its own cursor: it also logs actions taken while no registry ran).
 */

/** Actions read per poll: a burst of operator scripting is taken over a few seconds, memory stays bounded. */
const ACTIONS_PER_POLL = 1_000;

export class OperatorSync {
  private seen = 0;
  private running: Promise<void> = Promise.resolve();

  /** `removed`: called after members were removed (the relay re-checks its sessions at once). */
  constructor(private readonly store: RegistryStore, private readonly fleet: Fleet, private readonly hub: EventHub,
    private readonly admins: AdminTokens, private readonly log: Logger, private readonly removed: () => void,
    private readonly registryLog: RegistryEvents) {}

  /** Loads blocked IDs and policies, and starts after the newest action (their effects are in the tables already). */
  async start(): Promise<void> {
    this.seen = await this.store.lastActionSeq();
    for (const b of await this.store.blocked()) this.fleet.net(b.network).blocked.add(b.id);
    for (const p of await this.store.policies()) this.fleet.net(p.network).setPolicy(p);
    await this.admins.load();
  }

  /** The seq of the newest action applied in memory: a row the change feed carries that is older than it is re-read (pg-change-feed.ts). */
  get appliedSeq(): number {
    return this.seen;
  }

  /** Applies the actions taken since the last poll; resolves once they are applied. */
  poll(): Promise<void> {
    this.running = this.running.then(() => this.pollOnce()).catch((err: unknown) => this.log.error({ err }, 'reading operator actions failed'));
    return this.running;
  }

  private async pollOnce(): Promise<void> {
    const actions = await this.store.actionsSince(this.seen, ACTIONS_PER_POLL);
    let policiesChanged = false;
    let removals = 0;
    for (const a of actions) {
      this.seen = a.seq;
      if (a.action === 'policy') policiesChanged = true;
      else if (a.action === 'admin-token') await this.admins.load();
      else if ((a.action === 'remove' || a.action === 'block') && this.removeFromMemory(a)) removals++;
    }
    if (removals > 0) this.removed();
    if (policiesChanged) await this.loadPolicies();
    await this.registryLog.logActions();
  }

  /** Whether a member was removed. */
  private removeFromMemory(a: OperatorAction): boolean {
    if (a.id === null) return false;
    const state = this.fleet.net(a.network);
    if (a.action === 'block') state.blocked.add(a.id);
    const name = state.members.get(a.id)?.name;
    if (!state.removeMember(a.id)) return false;
    this.log.info({ network: a.network, id: a.id, name, event: a.action === 'block' ? 'blocked' : 'removed' }, `agent ${a.action === 'block' ? 'blocked' : 'removed'} by the operator`);
    this.hub.publishRemoved(a.network, a.id);
    // Its streams end: it is no longer a member (if it is one elsewhere, it reconnects there).
    this.hub.closeCredential(`agent:${a.id}`);
    return true;
  }

  private async loadPolicies(): Promise<void> {
    for (const p of await this.store.policies()) {
      const state = this.fleet.net(p.network);
      if (state.policy && state.policy.version >= p.version) continue;
      state.setPolicy(p);
      this.log.info({ network: p.network, version: p.version, event: 'policy' }, 'policy set');
      this.hub.publishPolicy(p.network, state.policyJson);
    }
  }
}
