import { noAudit, type AuditSink } from '../audit/sink.js';
import { decide, type TrustView } from './decide.js';
import { MAX_TRUST_ENTRIES, type TrustEntry, type TrustListEntry, type TrustMode, type TrustStore } from './store.js';

/** The two log levels the gate uses (a pino logger fits). */
export interface TrustLog {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/**
 * The trust store as the daemon uses it: admits or refuses each verified record (decide() and
 * its update), logs each alert once (a record repeated by the registry logs nothing new), keeps
 * the current alerts for `status`, and serves the operator's actions.
 */
export class TrustGate {
  /** The refusal alert standing for each agent ID; at most one per ID, as many IDs as the store holds. */
  private readonly alerts = new Map<string, string>();

  constructor(readonly store: TrustStore, readonly mode: TrustMode, private readonly log: TrustLog, private readonly audit: AuditSink = noAudit) {}

  admit(view: TrustView): boolean {
    const id = view.record.id;
    const d = decide(this.store, this.mode, view);
    this.store.apply(d.update);
    if (d.note) {
      this.log.info({ id, name: view.record.name, state: d.state, event: 'trust' }, d.note);
      this.audit(`trust.${d.state}`, id, { name: view.record.name, note: d.note });
    }
    if (d.alert) {
      if (this.alerts.get(id) !== d.alert) {
        this.log.warn({ id, name: view.record.name, state: d.state, event: 'trust-alert' }, d.alert);
        this.audit('trust.refused', id, { name: view.record.name, state: d.state, alert: d.alert });
      }
      if (this.alerts.has(id) || this.alerts.size < MAX_TRUST_ENTRIES) this.alerts.set(id, d.alert);
    } else if (d.state !== 'changed') {
      // A changed entry keeps its alert until an operator decides, even while its pinned key is admitted.
      this.alerts.delete(id);
    }
    return d.admit;
  }

  /** The standing alerts, one line each, for `agentvpn status`. */
  alertLines(): string[] {
    return [...this.alerts.values()];
  }

  /** What the trustList control method answers. */
  list(): { mode: TrustMode; entries: TrustListEntry[] } {
    return { mode: this.mode, entries: this.store.list() };
  }

  /** The operator actions (trustAccept, trustApprove, trustBlock, trustForget): `{ entry }`; then offer the held records again. */
  accept(name: string): { entry: TrustEntry } {
    return this.acted('accepted', this.store.accept(name));
  }

  approve(name: string): { entry: TrustEntry } {
    return this.acted('approved', this.store.approve(name));
  }

  block(target: string): { entry: TrustEntry } {
    return this.acted('blocked', this.store.block(target));
  }

  forget(name: string): { entry: TrustEntry } {
    return this.acted('forgotten', this.store.forget(name));
  }

  /** After an operator's decision the old alerts may no longer hold: the recheck of held records makes the current ones. */
  private acted(what: 'accepted' | 'approved' | 'blocked' | 'forgotten', entry: TrustEntry): { entry: TrustEntry } {
    this.alerts.clear();
    this.audit(`trust.${what}`, entry.id, { name: entry.name ?? null, state: entry.state, by: 'operator' });
    this.log.info({ id: entry.id, name: entry.name, state: entry.state, event: 'trust-operator' }, `trust: ${entry.name ?? entry.id} is now ${entry.state}`);
    return { entry };
  }
}
