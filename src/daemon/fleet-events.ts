import type { JsonValue } from '../audit/entry.js';
import type { AgentView } from '../registry/client.js';
import type { EventAgent, PathKind } from './control-protocol.js';
import type { EventHub } from './event-hub.js';

export interface FleetEventSourceOptions {
  hub: EventHub;
  /** Whether admission holds this agent now (asked right after it applied a view). */
  isAdmitted(id: string): boolean;
  /** The path layer's current view of a peer (for the relay's name and the RTT). */
  pathOf(wgKey: Uint8Array): { kind: PathKind; endpoint: string; rttMs: number | null } | null;
}

interface Known extends EventAgent {
  wgPublicKey: string;
  online: boolean;
}

/**
 * Turns what the fleet agent already observes into events: presence from the registry's views
 * of admitted agents (only records that verified and that the trust store let in name an event),
 * and path changes and trust alerts from the audit sink every part reports to. It keeps one small
 * entry per admitted agent, dropped when the agent is.
 */
export class FleetEventSource {
  private readonly known = new Map<string, Known>();

  constructor(private readonly opts: FleetEventSourceOptions) {}

  /** A view the registry sent, after admission applied it. */
  observe(view: AgentView): void {
    const r = view?.record;
    if (!r || typeof r.id !== 'string') return;
    if (!this.opts.isAdmitted(r.id)) {
      this.known.delete(r.id);
      return;
    }
    const before = this.known.get(r.id);
    const online = view.online === true;
    const now: Known = { id: r.id, name: r.name, ipv4: r.ipv4, ipv6: r.ipv6, wgPublicKey: r.wgPublicKey, online };
    this.known.set(r.id, now);
    // A newcomer that is offline says nothing new; one that is online has come online for us.
    if ((before?.online ?? false) !== online) this.opts.hub.publish({ type: online ? 'peer.online' : 'peer.offline', ...agentOf(now) });
  }

  /** An audit event: the ones that matter to agents become stream events. */
  audited(type: string, subject: string, details: { [key: string]: JsonValue } = {}): void {
    // The path layer reports a change just before it makes it: read its new state once it has.
    if (type === 'path.changed') queueMicrotask(() => this.pathChanged(subject, details));
    else if (type === 'trust.refused') this.trustAlert(subject, details);
    else if (type === 'peer.removed') this.removed(subject);
  }

  private pathChanged(id: string, d: { [key: string]: JsonValue }): void {
    const agent = this.known.get(id);
    if (!agent || (d.kind !== 'direct' && d.kind !== 'relay')) return; // not an admitted agent's path
    const kind: PathKind = d.kind;
    const now = this.opts.pathOf(Buffer.from(agent.wgPublicKey, 'base64'));
    const current = now?.kind === kind ? now : null;
    const rttMs = typeof d.rttUs === 'number' ? Math.round(d.rttUs / 10) / 100 : (current?.rttMs ?? null);
    // For a fallback to the relay, the audit's endpoint is the direct one that stopped answering.
    const endpoint = kind === 'direct' ? String(d.endpoint ?? current?.endpoint ?? '') : (current?.endpoint ?? 'relay');
    this.opts.hub.publish({
      type: 'path.changed', ...agentOf(agent), kind, endpoint, rttMs,
      ...(typeof d.reason === 'string' ? { reason: d.reason } : {}),
    });
  }

  private trustAlert(id: string, d: { [key: string]: JsonValue }): void {
    this.opts.hub.publish({ type: 'trust.alert', id, name: String(d.name ?? ''), state: String(d.state ?? ''), alert: String(d.alert ?? '') });
  }

  private removed(id: string): void {
    const agent = this.known.get(id);
    if (!agent) return;
    this.known.delete(id);
    if (agent.online) this.opts.hub.publish({ type: 'peer.offline', ...agentOf(agent), reason: 'removed' });
  }
}

function agentOf(k: Known): EventAgent {
  return { id: k.id, name: k.name, ipv4: k.ipv4, ipv6: k.ipv6 };
}
