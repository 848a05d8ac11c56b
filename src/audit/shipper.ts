import { existsSync, readFileSync } from 'node:fs';
import { AgentVpnError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import type { NoteVerifier } from './checkpoint.js';
import { openCosigned } from './cosignature.js';
import { pinnedWitness } from './agent-dir.js';
import { auditPath } from './files.js';
import type { AuditLog } from './log.js';
import type { AuditSink } from './sink.js';

/**
 * Ships the agent's log to the registry's witness and keeps what it cosigned. The log on disk is
 * the queue: `shipped.json` says how far the registry holds it, so entries written while the
 * registry is down go out, in order, when it returns, and a restart resumes where it stopped.
 * Each batch goes with a checkpoint we sign and a consistency proof from the size the witness
 * holds; the cosigned checkpoint it returns must match our own tree before it is kept.
 */

export interface WitnessApi {
  witness(): Promise<{ name: string; publicKey: string }>;
  ship(body: { agent: string; from: number; entries: string[]; checkpoint: string; proof: string[] }): Promise<{ size: number; cosigned: string }>;
  head(): Promise<{ size: number; cosigned: string | null }>;
}

export type ShipState = 'starting' | 'shipping' | 'caught-up' | 'registry-down' | 'refused' | 'witness-changed' | 'registry-ahead' | 'fork';

export interface ShipperOptions {
  log: AuditLog;
  dir: string;
  agentId: string;
  api: WitnessApi;
  audit: AuditSink;
  warn: (obj: object, msg: string) => void;
  /** How often to look for new entries. */
  intervalMs?: number;
}

/** Entries per request: the witness caps a ship at 512 (issue9-design.md). */
const BATCH = 512;
const INTERVAL_MS = 1000;
const BACKOFF_MAX_MS = 30_000;
/** A refused history is not retried often: only an operator can resolve it. */
const REFUSED_RETRY_MS = 60_000;

export class AuditShipper {
  state: ShipState = 'starting';
  /** Entries the registry holds (null: ask it). */
  private shipped: number | null;
  private witness: NoteVerifier | null;
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private retryAt = 0;
  private backoff = INTERVAL_MS;
  private problem: string | null = null;
  lastError: string | null = null;
  private cosigned: string | null;
  /** Why witness.json could not be read (then nothing is shipped until an operator restores or deletes it). */
  private damagedPin: string | null = null;

  constructor(private readonly opts: ShipperOptions) {
    this.shipped = readJson<{ size: number }>(auditPath(opts.dir, 'shipped'))?.size ?? null;
    try {
      this.witness = pinnedWitness(opts.dir);
    } catch (e) {
      // A damaged pin must not be replaced by whatever key the registry offers now.
      this.witness = null;
      this.damagedPin = (e as Error).message;
    }
    const cosigned = auditPath(opts.dir, 'cosigned');
    this.cosigned = existsSync(cosigned) ? readFileSync(cosigned, 'utf8') : null;
  }

  /** The newest checkpoint the witness cosigned for us, or null. */
  lastCosigned(): string | null {
    return this.cosigned;
  }

  start(): void {
    this.timer ??= setInterval(() => void this.tick(), this.opts.intervalMs ?? INTERVAL_MS);
    this.timer.unref();
    void this.tick();
  }

  /** Ships now (tests and `audit verify` want the registry up to date); resolves when caught up or failed. */
  async shipNow(): Promise<void> {
    this.retryAt = 0;
    await this.running;
    await this.tick();
  }

  stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    return this.running ?? Promise.resolve();
  }

  /** The pinned witness (for verify), or null before first contact. */
  get witnessKey(): NoteVerifier | null {
    return this.witness;
  }

  status() {
    return { state: this.state, shipped: this.shipped, witness: this.witness?.name ?? null, problem: this.problem, lastError: this.lastError };
  }

  /** An alert for `status`, when an operator must act. */
  alert(): string | null {
    return this.problem;
  }

  private tick(): Promise<void> {
    if (this.running || Date.now() < this.retryAt) return this.running ?? Promise.resolve();
    this.running = this.run().finally(() => (this.running = null));
    return this.running;
  }

  private async run(): Promise<void> {
    const { log } = this.opts;
    try {
      if (this.isStuck()) this.shipped = null; // retrying: an operator may have resolved it
      this.state = 'starting';
      if (this.damagedPin) {
        return this.stuck('witness-changed', `${this.damagedPin}: audit entries are not shipped`, 'audit.witness-damaged', { file: auditPath(this.opts.dir, 'witness') });
      }
      if (!this.witness) await this.pinWitness();
      if (this.shipped === null) await this.reconcile();
      while (this.shipped !== null && this.shipped < log.size && !this.isStuck()) await this.shipBatch(this.shipped, Math.min(this.shipped + BATCH, log.size));
      if (!this.isStuck()) {
        this.state = 'caught-up';
        this.problem = null;
      }
      this.backoff = INTERVAL_MS;
    } catch (e) {
      this.failed(e as Error);
    }
  }

  private isStuck(): boolean {
    return this.state === 'refused' || this.state === 'witness-changed' || this.state === 'registry-ahead' || this.state === 'fork';
  }

  /** Trust on first use: the witness key the registry names at first contact is pinned in witness.json. */
  private async pinWitness(): Promise<void> {
    const w = await this.opts.api.witness();
    const publicKey = Buffer.from(w.publicKey, 'base64');
    if (typeof w.name !== 'string' || publicKey.length !== 32) throw new AgentVpnError('AUDIT_BAD_WITNESS', 'the registry named no usable witness key', 'upgrade the registry');
    writeFileAtomic(auditPath(this.opts.dir, 'witness'), `${JSON.stringify({ name: w.name, publicKey: w.publicKey })}\n`, 0o644);
    this.witness = { name: w.name, publicKey };
    this.opts.audit('audit.witness-pinned', w.name, { publicKey: w.publicKey });
  }

  /** Where the registry's copy ends, and whether what it cosigned is our history. */
  private async reconcile(): Promise<void> {
    const [head, w] = await Promise.all([this.opts.api.head(), this.opts.api.witness()]);
    if (w.name !== this.witness!.name || !Buffer.from(w.publicKey, 'base64').equals(Buffer.from(this.witness!.publicKey))) {
      return this.stuck('witness-changed', `the registry's witness key changed (pinned ${this.witness!.name}, now ${w.name}): audit entries are not shipped`,
        'audit.witness-changed', { pinned: this.witness!.name, offered: w.name, publicKey: w.publicKey });
    }
    const { log } = this.opts;
    if (head.size > log.size) {
      return this.stuck('registry-ahead', `the registry holds ${head.size} audit entries of this agent but the log has ${log.size}: the local log lost entries`,
        'audit.registry-ahead', { held: head.size, local: log.size });
    }
    if (head.cosigned && !this.matchesOurs(head.cosigned, head.size)) {
      return this.stuck('fork', `the registry witnessed a different history at size ${head.size}: the local log was rewritten`,
        'audit.fork', { held: head.size });
    }
    if (head.cosigned) this.keepCosigned(head.cosigned);
    this.setShipped(head.size);
  }

  private async shipBatch(from: number, to: number): Promise<void> {
    const { log } = this.opts;
    this.state = 'shipping';
    const body = {
      agent: this.opts.agentId, from,
      entries: log.read(from, to).map((l) => l.toString('utf8')),
      checkpoint: log.signCheckpointAt(to),
      proof: from > 0 ? log.tree.consistencyProof(from, to).map((h) => h.toString('base64')) : [],
    };
    let answer;
    try {
      answer = await this.opts.api.ship(body);
    } catch (e) {
      const code = (e as AgentVpnError).code;
      if (code === 'AUDIT_GAP') {
        this.shipped = null; // the registry holds another size: ask it, next round
        return this.reconcile();
      }
      if (code === 'AUDIT_INCONSISTENT') {
        return this.stuck('refused', `the registry refused our audit checkpoint at size ${to} as inconsistent with what it witnessed`,
          'audit.refused', { from, size: to, message: (e as Error).message.slice(0, 200) });
      }
      throw e;
    }
    if (!this.matchesOurs(answer.cosigned, to)) throw new AgentVpnError('AUDIT_BAD_COSIGNATURE', `the registry's cosigned checkpoint for size ${to} does not verify or is not ours`, 'check the registry (agentvpn registry audit verify)');
    this.keepCosigned(answer.cosigned);
    this.setShipped(to);
  }

  /** Is the note cosigned by the pinned witness, of size `size`, with our root at that size? */
  private matchesOurs(note: string, size: number): boolean {
    try {
      const cp = openCosigned(note, this.witness!);
      return cp.size === size && size <= this.opts.log.size && cp.rootHash.length === 32 && this.opts.log.tree.root(size).equals(cp.rootHash);
    } catch {
      return false;
    }
  }

  private keepCosigned(note: string): void {
    writeFileAtomic(auditPath(this.opts.dir, 'cosigned'), note, 0o644);
    this.cosigned = note;
  }

  private setShipped(size: number): void {
    this.shipped = size;
    writeFileAtomic(auditPath(this.opts.dir, 'shipped'), `${JSON.stringify({ size })}\n`, 0o644);
  }

  private stuck(state: ShipState, problem: string, type: string, details: Record<string, string | number>): void {
    if (this.problem !== problem) {
      this.opts.warn({ state, ...details }, problem);
      this.opts.audit(type, 'registry', details);
    }
    this.state = state;
    this.problem = problem;
    this.retryAt = Date.now() + REFUSED_RETRY_MS;
  }

  private failed(e: Error): void {
    this.lastError = e.message;
    this.state = 'registry-down';
    this.retryAt = Date.now() + this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
  }
}

function readJson<T>(path: string): T | null {
  if (!existsSync(path)) return null;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return null;
  }
}
