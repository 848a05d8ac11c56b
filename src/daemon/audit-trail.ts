import type { Logger as PinoLogger } from 'pino';
import type { JsonValue } from '../audit/entry.js';
import { auditDirOf, auditPath } from '../audit/files.js';
import { AuditLog } from '../audit/log.js';
import { agentLogOrigin } from '../audit/origin.js';
import type { AuditSink } from '../audit/sink.js';
import type { Identity } from '../identity/identity.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { EventLimit } from '../util/event-limit.js';

/**
 * How long an action waits for its entry to reach the disk before it goes on anyway: normally a
 * synchronous write (milliseconds); a failing disk must not stop the VPN admitting peers.
 */
const DURABLE_WAIT_MS = 1_000;

/** A failing disk is logged at most this often (each append would otherwise log its failure). */
const WARN_EVERY_MS = 10_000;

/**
 * Events a peer or the network can repeat at will (a path made to flap, a registry that comes and
 * goes): each subject may write 10 per 5 minutes (1,000 in all); what is held back is counted in
 * the next entry's `suppressed`. Everything else is rare or bounded at its source.
 */
const NOISY = new Set(['path.changed', 'registry.outage', 'registry.connected']);
const NOISY_LIMITS = { perKey: 10, total: 1_000, windowMs: 300_000, maxKeys: 16_384 };

/**
 * The agent's audit trail: its AuditLog in `<state dir>/audit/`, signed with the identity's
 * current key, and the sink every part reports to. Events are appended off the packet path;
 * callers that must not go on before an entry is durable use append().
 */
export class AuditTrail {
  /** Entries that could not be written (the log refused them: closed or its disk backlog full). */
  lost = 0;
  private lastWarnAt = 0;
  private readonly deniesSeen = new Map<string, number>();
  private readonly noisy = new EventLimit(NOISY_LIMITS);

  private constructor(readonly log: AuditLog, readonly dir: string, private readonly logger: PinoLogger) {}

  static async open(stateDir: string, identity: Identity, logger: PinoLogger): Promise<AuditTrail> {
    const dir = auditDirOf(stateDir);
    const origin = agentLogOrigin(identity.id);
    const log = await AuditLog.open({
      dir, owner: identity.id, origin, signer: identity.noteSigner(origin),
      onWriteError: (err) => logger.error({ err: err.message, dir }, 'cannot write the audit log; entries wait and are retried'),
    });
    if (log.damage) logger.error({ dir, damage: log.damage }, 'the audit log does not verify: run `agentvpn audit verify` (new entries are still written)');
    if (log.tornBytesCut) logger.warn({ dir, bytes: log.tornBytesCut }, 'cut a torn last audit entry (a crash while it was written; it was never acknowledged)');
    const trail = new AuditTrail(log, dir, logger);
    trail.writeChain(identity);
    return trail;
  }

  /** Reports an event; never throws, never waits. */
  readonly record: AuditSink = (type, subject, details = {}) => {
    if (NOISY.has(type)) {
      const taken = this.noisy.take(`${type} ${subject}`);
      if (!taken) return Promise.resolve();
      if (taken.skipped) details = { ...details, suppressed: taken.skipped };
    }
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, DURABLE_WAIT_MS);
      this.log.append(type, subject, details).catch((e) => this.failed(type, e as Error)).finally(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  };

  /** Appends and resolves once the entry is on disk. */
  append(type: string, subject: string, details: { [key: string]: JsonValue } = {}) {
    return this.log.append(type, subject, details);
  }

  /** After a key rotation: checkpoints are signed with the new key, and chain.json proves it. */
  setIdentity(identity: Identity): void {
    this.log.setSigner(identity.noteSigner(agentLogOrigin(identity.id)));
    this.writeChain(identity);
  }

  /**
   * Policy denies are counted in the data path; this turns the counts into at most one entry per
   * peer per call (the caller calls it every few seconds), so a flood of denied packets costs the
   * log one line per interval, not one per packet.
   */
  recordDenies(peers: Iterable<{ id: string; name: string; denies: Record<string, number> | null }>): void {
    for (const p of peers) {
      if (!p.denies) continue;
      const total = Object.values(p.denies).reduce((a, b) => a + b, 0);
      const seen = this.deniesSeen.get(p.id) ?? 0;
      if (total > seen) this.record('policy.denied', p.id, { name: p.name, packets: total - seen, total, byReason: p.denies });
      this.deniesSeen.set(p.id, total);
    }
  }

  status() {
    return { dir: this.dir, ...this.log.status(), lost: this.lost };
  }

  close(): Promise<void> {
    return this.log.close();
  }

  private writeChain(identity: Identity): void {
    writeFileAtomic(auditPath(this.dir, 'chain'), `${JSON.stringify({ id: identity.id, chain: identity.chain })}\n`, 0o644);
  }

  private failed(type: string, err: Error): void {
    this.lost++;
    const now = Date.now();
    if (now - this.lastWarnAt < WARN_EVERY_MS) return;
    this.lastWarnAt = now;
    this.logger.error({ type, err: err.message, lost: this.lost }, 'an audit entry was not written');
  }
}
