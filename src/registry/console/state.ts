import type { AuditLog } from '../../audit/log.js';
import type { Fleet } from '../fleet-state.js';
import type { RegistryStats } from '../protocol.js';
import { RegistryLog, type RegistryEvents } from '../registry-log.js';
import type { AuditRefusal, RegistryStore } from '../store.js';
import type { PathReports } from './path-reports.js';

/**
 * What the console shows besides the agents (those come from the event stream): members, the
 * paths agents report, join tokens, the policy, blocked IDs, the registry's own audit log, the
 * audit refusals (forked agent logs) and the registry's counters, for one network. Every list is
 * capped, so one answer stays small whatever the registry holds.
 *
 * | field        | what                                                                          |
 * | ------------ | ----------------------------------------------------------------------------- |
 * | network      | the network shown; networks: every network the registry knows                 |
 * | now          | the registry's clock (the page shows "last seen" against it)                  |
 * | members      | {id, name, ipv4, tags, joinedAt}: joined agents, published or not             |
 * | paths        | {ID: {at, paths: ReportedPath[]}}: what each agent reports (path-report.ts)   |
 * | tokens       | {id (16 hex of the hash), createdAt, expiresAt, usesLeft, tags, usable}       |
 * | policy       | {version, text, setAt} or null                                                |
 * | blocked      | {id, name, blockedAt}                                                         |
 * | audit        | {size, damage, entries: newest first} or null (a registry without a log)      |
 * | refusals     | {id, agent, at, reason, held, size}: newest first                             |
 * | stats        | RegistryStats                                                                 |
 * | pathReports  | {accepted, refused, tooSoon, full}: path reports since the registry started   |
 */

/** Entries of the registry's log shown: the newest hundred (the CLI has the rest). */
const AUDIT_ENTRIES = 100;
/** Tokens listed, newest first. */
const TOKENS = 200;
/** Refusals remembered for the console, newest first. */
const REFUSALS = 100;
/** Refusals read from the store per call while catching up. */
const REFUSALS_PER_READ = 500;
/** Token hashes are shown by a prefix, as the registry's log names them. */
const TOKEN_ID_HEX = 16;

export interface ConsoleStateContext {
  store: RegistryStore;
  fleet: Fleet;
  events: RegistryEvents;
  stats(): RegistryStats;
}

export class ConsoleState {
  private refusals: AuditRefusal[] = [];
  private refusalCursor = 0;

  constructor(private readonly ctx: ConsoleStateContext, private readonly paths: PathReports) {}

  /** The registry's own audit log, when it keeps one. */
  private get log(): AuditLog | null {
    return this.ctx.events instanceof RegistryLog ? this.ctx.events.log : null;
  }

  async build(network: string, now: number): Promise<Record<string, unknown>> {
    const { store, fleet } = this.ctx;
    const state = fleet.networks.get(network);
    const policy = state?.policy ?? null;
    const tokens = await store.tokens(network, TOKENS);
    const refusals = await this.newestRefusals();
    return {
      network,
      networks: [...fleet.networks.keys()].sort(),
      now,
      members: [...(state?.members.values() ?? [])].map((m) => ({ id: m.id, name: m.name, ipv4: m.ipv4, tags: m.tags, joinedAt: m.joinedAt })),
      paths: Object.fromEntries(this.paths.of(network)),
      tokens: tokens.map((t) => ({
        id: t.hash.slice(0, TOKEN_ID_HEX), createdAt: t.createdAt, expiresAt: t.expiresAt, usesLeft: t.usesLeft, tags: t.tags,
        usable: (t.expiresAt === null || t.expiresAt > now) && (t.usesLeft === null || t.usesLeft > 0),
      })),
      policy: policy && { version: policy.version, text: policy.text, setAt: policy.setAt },
      blocked: (await store.blocked()).filter((b) => b.network === network).map((b) => ({ id: b.id, name: b.name, blockedAt: b.blockedAt })),
      audit: this.auditTail(),
      refusals: refusals.filter((r) => r.network === network).map((r) => ({ id: r.id, agent: r.agent, at: r.at, reason: r.reason, held: r.held, size: r.size })),
      stats: this.ctx.stats(),
      pathReports: { ...this.paths.counts },
    };
  }

  private auditTail(): { size: number; damage: string | null; entries: unknown[] } | null {
    const log = this.log;
    if (!log) return null;
    const lines = log.read(Math.max(0, log.size - AUDIT_ENTRIES), log.size);
    return { size: log.size, damage: log.damage, entries: lines.reverse().map((l) => JSON.parse(l.toString('utf8')) as unknown) };
  }

  /** The newest refusals, read from the store once each (a cursor), the newest REFUSALS kept. */
  private async newestRefusals(): Promise<AuditRefusal[]> {
    for (;;) {
      const more = await this.ctx.store.auditRefusals(this.refusalCursor, REFUSALS_PER_READ);
      if (more.length === 0) break;
      this.refusalCursor = more[more.length - 1].id;
      this.refusals = [...more.reverse(), ...this.refusals].slice(0, REFUSALS);
      if (more.length < REFUSALS_PER_READ) break;
    }
    return this.refusals;
  }
}
