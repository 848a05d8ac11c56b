import { performance } from 'node:perf_hooks';
import { sameEndpoint } from '../net/endpoint.js';
import { buildBindingRequest, newTransactionId, parseBindingResponse } from '../net/stun.js';
import { relayChoice as C } from './constants.js';
import { smoothRtt, type RelayMeasure } from './relay-choice.js';

/** A relay to probe: its name and its UDP endpoint (20-byte form). */
export interface ProbedRelay {
  name: string;
  endpoint: Buffer;
}

interface Probe {
  relay: number;
  sentAt: number;
}

/**
 * Measures the RTT to each advertised relay with STUN Binding requests over the agent's own
 * socket (every relay answers STUN on its UDP port, members or not, so relays we hold no
 * session on are measured too). The home relay is probed every second (its liveness), the
 * others every few seconds. An answer counts only from the relay's own endpoint and with the
 * transaction ID of a probe still outstanding; at most a few probes per relay are outstanding.
 */
export class RelayProber {
  private readonly measures: RelayMeasure[];
  private readonly lastProbeAt: number[];
  private readonly pending = new Map<string, Probe>();

  constructor(private readonly relays: readonly ProbedRelay[], private readonly send: (buf: Buffer, endpoint: Buffer) => void) {
    this.measures = relays.map((r) => ({ name: r.name, rttMs: null, lastAnswerAt: -Infinity }));
    this.lastProbeAt = relays.map(() => -Infinity);
  }

  /** The measures, in the order the relays were given. */
  get all(): readonly RelayMeasure[] {
    return this.measures;
  }

  /** Sends the probes that are due: the home relay's every homeProbeMs, the others' every otherProbeMs. */
  tick(now: number, home: string | null): void {
    const t = performance.now();
    for (const [k, p] of this.pending) if (t - p.sentAt > C.probeTimeoutMs) this.pending.delete(k);
    for (let i = 0; i < this.relays.length; i++) {
      const every = this.relays[i].name === home ? C.homeProbeMs : C.otherProbeMs;
      if (now - this.lastProbeAt[i] < every) continue;
      this.lastProbeAt[i] = now;
      const txid = newTransactionId();
      this.pending.set(txid.toString('latin1'), { relay: i, sentAt: t });
      try {
        this.send(buildBindingRequest(txid), this.relays[i].endpoint);
      } catch {
        // the socket refused it: the relay simply gets no answer counted
      }
    }
  }

  /** A STUN datagram from src[srcOff]: true when it answers one of our probes (then it is used up); others are left to netcheck. */
  onResponse(buf: Buffer, off: number, len: number, src: Buffer, srcOff: number): boolean {
    // Cheap checks first: only a relay's own address is parsed at all (a flood from elsewhere costs a compare).
    if (this.pending.size === 0 || !this.relays.some((r) => sameEndpoint(r.endpoint, 0, src, srcOff))) return false;
    const answer = parseBindingResponse(buf, off, len);
    const key = answer?.txid.toString('latin1');
    const probe = key === undefined ? undefined : this.pending.get(key);
    if (!probe || !sameEndpoint(this.relays[probe.relay].endpoint, 0, src, srcOff)) return false;
    this.pending.delete(key!);
    const m = this.measures[probe.relay];
    m.rttMs = smoothRtt(m.rttMs, performance.now() - probe.sentAt);
    m.lastAnswerAt = Date.now();
    return true;
  }
}
