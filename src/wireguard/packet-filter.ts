import type { Peer } from './peer.js';

/**
 * What the Device asks about every IP packet when a filter is installed (src/policy/filter.ts
 * implements it): decrypted packets after the allowed-IPs source check, and packets from the TUN
 * before they are sealed. Calls are synchronous and must not allocate per packet.
 */
export interface PacketFilter {
  /** A decrypted packet from `peer`; false drops it. */
  inbound(peer: Peer, buf: Buffer, off: number, len: number, now: number): boolean;
  /** A packet from the TUN routed to `peer`; false drops it. */
  outbound(peer: Peer, buf: Buffer, off: number, len: number, now: number): boolean;
  /**
   * After outbound() refused the packet at buf[off, off+len): the length of an answer for the
   * TUN (an ICMP unreachable) now in `rejectBuffer`, or 0 when none is due (budget, ICMP errors).
   */
  rejection(buf: Buffer, off: number, len: number): number;
  readonly rejectBuffer: Buffer;
  /** For status: packets denied for this peer, by reason (null when none were decided). */
  deniesOf(peer: Peer): Record<string, number> | null;
  /** For status: the filter's own figures (policy in force, flows, answers sent and shed). */
  report(): Record<string, number | boolean>;
}
