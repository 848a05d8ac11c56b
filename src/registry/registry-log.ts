import type { IncomingMessage } from 'node:http';
import type { Logger } from 'pino';
import { clip, type JsonValue } from '../audit/entry.js';
import { AuditLog } from '../audit/log.js';
import { addressKey } from '../net/connection-guard.js';
import { EventLimit } from '../util/event-limit.js';
import { LOGGED_ACTIONS_KEY, type AuditRefusal, type Member, type OperatorAction, type RegistryStore } from './store.js';
import type { WitnessKey } from './witness-key.js';

/**
 * The registry's own audit log: its control-plane actions, in the same format as an agent's log
 * (src/audit/log.ts), in a directory beside the database (`<db>.audit/`), signed with the witness
 * key under the registry log's name (witness-key.ts). Each entry is on disk before the action is
 * acknowledged, except where a flood is bounded (rejoins, leaves, failed admin logins, refusals:
 * one entry per key per window, standing for the ones left out: details.alsoSkipped).
 *
 * | type                | subject               | details                                             |
 * | ------------------- | --------------------- | --------------------------------------------------- |
 * | registry.started    | witness name          | {publicKey, damage}                                 |
 * | registry.stopped    | ""                    | {}                                                  |
 * | token.created       | network               | {token (16 hex of its hash), expiresAt, uses, tags} |
 * | agent.joined        | agent ID              | {network, name, ipv4, tags}                         |
 * | agent.rejoined      | agent ID              | {network, name, renamed}                            |
 * | agent.left          | agent ID              | {network}                                           |
 * | agent.removed       | agent ID              | {network, name, wasMember}                          |
 * | agent.blocked       | agent ID              | {network, name, wasMember}                          |
 * | policy.set          | network               | {version, sha256}                                   |
 * | admin-token.created | token (16 hex)        | {}                                                  |
 * | admin.login         | token (16 hex)        | {source}: the token's first use in this process     |
 * | admin.auth-failed   | source address        | {failures}                                          |
 * | audit.refused       | agent ID              | {network, refusal, held, size, reason}              |
 *
 * Operator actions (token, remove, block, policy, admin token) reach it through the database's
 * operator_actions queue, wherever they were taken: the CLI on the database (another process)
 * cannot append here, since one process writes a log (it keeps the tree in memory; log.ts locks
 * the directory), and the queue row is written in the same transaction as the action, so none is
 * lost. The running registry logs each within a sweep (~1 s), or at its next start; a cursor in
 * the database (LOGGED_ACTIONS_KEY) says how far it got, and an entry carries its action's seq.
 */

/** Checkpoints every 10 s while there are new entries (the rule for every log). */
const CHECKPOINT_EVERY_MS = 10_000;
const MINUTE_MS = 60_000;
/** One failed-admin-login entry per source per minute, 60 a minute in all: the admin budget (admin-auth.ts) already caps the attempts. */
const AUTH_FAILED_LIMITS = { perKey: 1, total: 60, windowMs: MINUTE_MS, maxKeys: 10_000 };
/** One rejoin (same name) or leave entry per agent per minute: a member cannot grow the log at will; a fleet-wide restart still fits. */
const CHURN_LIMITS = { perKey: 1, total: 10_000, windowMs: MINUTE_MS, maxKeys: 100_000 };
/** Operator actions logged per poll (as operator-sync.ts applies them). */
const ACTIONS_PER_POLL = 1_000;
/** Token hashes are named by a prefix: enough to tell tokens apart, no use to anyone holding the log. */
const TOKEN_ID_HEX = 16;

const tokenId = (hash: string) => hash.slice(0, TOKEN_ID_HEX);

/** What the routes tell the registry's log (a no-op without one). */
export interface RegistryEvents {
  joined(network: string, member: Member, created: boolean, renamed: boolean): Promise<void>;
  left(network: string, id: string): Promise<void>;
  adminLogin(tokenHash: string, req: IncomingMessage): Promise<void>;
  adminAuthFailed(req: IncomingMessage): Promise<void>;
  refused(r: AuditRefusal, skipped: number): Promise<void>;
  /** Logs the operator actions not logged yet (operator-sync.ts calls it each poll). */
  logActions(): Promise<void>;
  close(): Promise<void>;
}

export const NO_REGISTRY_LOG: RegistryEvents = {
  joined: async () => {}, left: async () => {}, adminLogin: async () => {}, adminAuthFailed: async () => {}, refused: async () => {},
  logActions: async () => {}, close: async () => {},
};

export function registryLogDirOf(db: string): string {
  return `${db}.audit`;
}

export class RegistryLog implements RegistryEvents {
  private readonly loggedIn = new Set<string>();
  private readonly authFailures = new EventLimit(AUTH_FAILED_LIMITS);
  private readonly rejoins = new EventLimit(CHURN_LIMITS);
  private readonly leaves = new EventLimit(CHURN_LIMITS);
  private logging: Promise<void> = Promise.resolve();

  private constructor(readonly log: AuditLog, private readonly store: RegistryStore, private readonly logger: Logger) {}

  static async open(opts: { dir: string; witness: WitnessKey; store: RegistryStore; log: Logger }): Promise<RegistryLog> {
    const { witness } = opts;
    const log = await AuditLog.open({
      dir: opts.dir, owner: witness.registryLogName, origin: witness.registryLogName, signer: { name: witness.registryLogName, key: witness.key },
      checkpointEveryMs: CHECKPOINT_EVERY_MS, onWriteError: (err) => opts.log.error({ err, event: 'registry-log-write-failed' }, 'writing the registry audit log failed; retrying'),
    });
    if (log.damage) opts.log.warn({ event: 'registry-log-damaged', damage: log.damage, dir: opts.dir }, `the registry audit log is damaged: ${log.damage} (run agentvpn registry audit verify)`);
    const r = new RegistryLog(log, opts.store, opts.log);
    await r.append('registry.started', witness.name, { publicKey: witness.publicKey.toString('base64'), damage: log.damage });
    opts.log.info({ event: 'registry-log', dir: opts.dir, origin: witness.registryLogName, size: log.size }, `registry audit log ${opts.dir} (${log.size} entries)`);
    return r;
  }

  private async append(type: string, subject: string, details: { [key: string]: JsonValue }): Promise<void> {
    await this.log.append(type, clip(subject, 200), details);
  }

  async joined(network: string, m: Member, created: boolean, renamed: boolean): Promise<void> {
    if (created) return this.append('agent.joined', m.id, { network, name: m.name, ipv4: m.ipv4, tags: m.tags });
    const take = renamed ? { skipped: 0 } : this.rejoins.take(m.id);
    if (take) await this.append('agent.rejoined', m.id, { network, name: m.name, renamed, alsoSkipped: take.skipped });
  }

  async left(network: string, id: string): Promise<void> {
    const take = this.leaves.take(id);
    if (take) await this.append('agent.left', id, { network, alsoSkipped: take.skipped });
  }

  async adminLogin(tokenHash: string, req: IncomingMessage): Promise<void> {
    if (this.loggedIn.has(tokenHash)) return;
    this.loggedIn.add(tokenHash);
    await this.append('admin.login', tokenId(tokenHash), { source: addressKey(req.socket.remoteAddress) ?? '' });
  }

  async adminAuthFailed(req: IncomingMessage): Promise<void> {
    const source = addressKey(req.socket.remoteAddress) ?? '';
    const take = this.authFailures.take(source);
    if (take) await this.append('admin.auth-failed', source, { failures: 1 + take.skipped });
  }

  async refused(r: AuditRefusal, skipped: number): Promise<void> {
    await this.append('audit.refused', r.agent, { network: r.network, refusal: r.id, held: r.held, size: r.size, reason: clip(r.reason), alsoSkipped: skipped });
  }

  logActions(): Promise<void> {
    this.logging = this.logging.then(() => this.logActionsOnce()).catch((err: unknown) => {
      this.logger.error({ err, event: 'registry-log-actions-failed' }, 'logging operator actions failed; retrying at the next poll');
    });
    return this.logging;
  }

  private async logActionsOnce(): Promise<void> {
    const cursor = Number(await this.store.getMeta(LOGGED_ACTIONS_KEY) ?? 0);
    const actions = await this.store.actionsSince(cursor, ACTIONS_PER_POLL);
    for (const a of actions) {
      await this.append(...describeAction(a));
      await this.store.setMeta(LOGGED_ACTIONS_KEY, String(a.seq));
    }
  }

  async close(): Promise<void> {
    await this.logging;
    await this.append('registry.stopped', '', {}).catch(() => {});
    await this.log.close();
  }
}

function describeAction(a: OperatorAction): [string, string, { [key: string]: JsonValue }] {
  const d = (a.detail ?? {}) as { [key: string]: JsonValue };
  const base = { action: a.seq, at: a.at };
  switch (a.action) {
    case 'token':
      return ['token.created', a.network, { ...base, token: tokenId(a.id ?? ''), expiresAt: d.expiresAt ?? null, uses: d.uses ?? null, tags: d.tags ?? [] }];
    case 'remove':
    case 'block':
      return [a.action === 'block' ? 'agent.blocked' : 'agent.removed', a.id ?? '', { ...base, network: a.network, name: d.name ?? '', wasMember: d.wasMember ?? null }];
    case 'policy':
      return ['policy.set', a.network, { ...base, version: d.version ?? null, sha256: d.sha256 ?? null }];
    case 'admin-token':
      return ['admin-token.created', tokenId(a.id ?? ''), base];
  }
}
