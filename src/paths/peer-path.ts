import { ENDPOINT_SIZE, formatEndpoint, sameEndpoint } from '../wireguard/endpoint.js';
import { MAX_CANDIDATES } from './disco.js';

/**
 * How one fleet peer is reached: its candidate endpoints, the best direct path found by disco
 * pings (with its RTT and when it last answered), and its relay fallback. The socket layer
 * keeps the WireGuard peer's endpoint on `current()`.
 */
export class PeerPath {
  candidates: Buffer[] = [];
  direct: Buffer | null = null;
  directRttMs = Infinity;
  lastDirectPongAt = 0;
  relayRttMs: number | null = null;
  lastProbeAt = -Infinity;
  lastDirectPingAt = 0;
  /** First liveness ping on the direct path still without an answer; null when all were answered. */
  directUnansweredSince: number | null = null;
  /** Last time the device sent this peer anything through the relay (a reason to probe). */
  lastRelayedSendAt = 0;

  constructor(readonly wgKey: Buffer, readonly slot: number, readonly relayEndpoint: Buffer) {}

  setCandidates(list: Buffer[]): boolean {
    const changed = list.length !== this.candidates.length || list.some((c, i) => !sameEndpoint(c, 0, this.candidates[i], 0));
    this.candidates = list.slice(0, MAX_CANDIDATES);
    return changed;
  }

  /** Adds a peer-reflexive candidate (where its pings came from), as hole punching finds them. */
  addCandidate(ep: Buffer, off = 0): void {
    if (this.candidates.some((c) => sameEndpoint(c, 0, ep, off))) return;
    this.candidates.push(Buffer.from(ep.subarray(off, off + ENDPOINT_SIZE)));
    if (this.candidates.length > MAX_CANDIDATES) this.candidates.shift();
  }

  /** The endpoint WireGuard should use now. */
  current(): Buffer {
    return this.direct ?? this.relayEndpoint;
  }

  describe(relayName: string | null): { kind: 'direct' | 'relay'; endpoint: string; rttMs: number | null } {
    if (this.direct) return { kind: 'direct', endpoint: formatEndpoint(this.direct), rttMs: round(this.directRttMs) };
    return { kind: 'relay', endpoint: relayName ?? '(no relay)', rttMs: this.relayRttMs === null ? null : round(this.relayRttMs) };
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

/** Relay "endpoints" are virtual: ff52::<slot>, port 0, never a real unicast address. */
export function relayEndpointFor(slot: number): Buffer {
  const ep = Buffer.alloc(ENDPOINT_SIZE);
  ep[0] = 0xff;
  ep[1] = 0x52;
  ep.writeUInt32BE(slot, 12);
  return ep;
}

export function isRelayEndpoint(addrs: Uint8Array, off: number): boolean {
  return addrs[off] === 0xff && addrs[off + 1] === 0x52;
}

export function relaySlotOf(addrs: Buffer, off: number): number {
  return addrs.readUInt32BE(off + 12);
}
