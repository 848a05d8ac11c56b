import { AgentVpnError } from '../errors.js';

/**
 * Token buckets for the relay: per-agent packet and byte rates, and the budgets that keep the
 * relay itself cheap to run (signature checks, notices), per source and in total.
 */

export interface RelayLimits {
  /** Packets per second each agent may send through the relay. */
  packetsPerSecond: number;
  /** Bytes per second (packet bytes) each agent may send through the relay. */
  bytesPerSecond: number;
  /** How far an agent may run ahead of its rates: bucket sizes in packets and bytes. */
  burst: { packets: number; bytes: number };
}

/**
 * Per agent: ~200 Mbit/s of full-size WireGuard packets, which is what one relay core forwards
 * comfortably; a burst of half a second absorbs TCP slow-start without queueing.
 */
export const DEFAULT_LIMITS: RelayLimits = {
  packetsPerSecond: 20_000,
  bytesPerSecond: 25_000_000,
  burst: { packets: 10_000, bytes: 12_500_000 },
};

/**
 * Hello signatures the relay checks per second, over all sources. A new session costs ~40 µs
 * (Ed25519 verify, libsodium) plus ~33 µs (its WireGuard key from the Ed25519 key), so a flood of
 * forged hellos may take at most ~15% of a core. The burst lets a fleet of 10,000 agents say
 * hello again at once after a relay restart (~0.7 s of CPU, once).
 */
export const HELLO_VERIFY_RATE = 2_000;
export const HELLO_VERIFY_BURST = 10_000;
/**
 * Hello signatures checked per second for one source (an IPv4 address, an IPv6 /64): a twentieth
 * of the total, so no single source can spend the global budget (it takes 20 of them). The burst
 * lets ~500 agents behind one NAT reconnect at once.
 */
export const HELLO_VERIFY_RATE_PER_SOURCE = 100;
export const HELLO_VERIFY_BURST_PER_SOURCE = 500;
/**
 * Challenges answered per second for one source, and over all: a hello needs one (a reconnecting
 * agent asks once, its retransmissions reuse it), so these match the hello budgets above. An
 * answer costs one MAC and a 22-byte datagram to a request of 34 bytes: a flood of requests costs
 * less than a flood of hellos did, and a spoofed source gets no more than this towards its victim.
 */
export const CHALLENGE_RATE_PER_SOURCE = HELLO_VERIFY_RATE_PER_SOURCE;
export const CHALLENGE_BURST_PER_SOURCE = HELLO_VERIFY_BURST_PER_SOURCE;
export const CHALLENGE_RATE = HELLO_VERIFY_RATE * 5;
export const CHALLENGE_BURST = HELLO_VERIFY_BURST;
/** Notices per second to one agent: enough to learn "peer not here" at once, too few to echo floods. */
export const NOTICE_RATE_PER_CLIENT = 10;
/**
 * Peer-address answers per second to one agent (burst alike): an easy-side agent asks once per
 * birthday request it takes up, and those come at most 4 at a time and back off from 30 s.
 */
export const PEER_ADDRESS_RATE_PER_CLIENT = 4;
/** Notices per second to one source the relay has no session for (not registered, refused hellos). */
export const NOTICE_RATE_PER_SOURCE = 10;
/** Notices per second to sources the relay has no session for, over all of them. */
export const NOTICE_RATE_UNKNOWN = 200;
/**
 * STUN answers per second to one source: an agent asks a few times a minute, a hundred agents
 * behind one NAT restarting at once get through in seconds, and a spoofed-source reflection gets
 * no more than this towards its victim.
 */
export const STUN_RATE_PER_SOURCE = 50;
export const STUN_BURST_PER_SOURCE = 100;
/**
 * STUN answers per second over all sources: spoofed sources are free to invent, so without a total
 * a reflection through us was bounded only by our uplink. An answer is ~2x its request (32–44
 * bytes to a 20-byte request): 5,000/s is ~200 KB/s at most. The burst lets a fleet of 10,000
 * agents ask again at once after a restart; past it they retry within seconds (netcheck does).
 */
export const STUN_RATE = 5_000;
export const STUN_BURST = 10_000;
/**
 * STUN answers per second to the endpoints of agents with a session here, apart from strangers'
 * (so spoofed strangers cannot starve the fleet): larger, but bounded too, since a member who
 * knows the others' endpoints (from their records) can spoof those as well.
 */
export const STUN_RATE_MEMBERS = 20_000;
export const STUN_BURST_MEMBERS = 20_000;
/**
 * Sessions at once (~1 KB each, so ~100 MB): a registry's relay has at most one per member key,
 * an open relay is bounded here. A new key's hello past it is shed; its client retries.
 */
export const MAX_SESSIONS = 100_000;
/**
 * TCP fallback connections from one source at once: ~500 agents behind one NAT on TCP. More would
 * only hold file descriptors (each must say hello within TCP_HELLO_TIMEOUT_MS anyway).
 */
export const MAX_TCP_CONNECTIONS_PER_SOURCE = 512;
/**
 * Sources whose budgets are tracked at once (~100 bytes each). Past this the oldest are forgotten:
 * a forgotten source starts again with a full but small bucket, and the global budgets still hold,
 * so spoofing many sources buys no more than the global rate.
 */
export const MAX_TRACKED_SOURCES = 65_536;

export function validateLimits(l: RelayLimits): RelayLimits {
  const ok = (v: number) => Number.isFinite(v) && v > 0;
  if (!ok(l.packetsPerSecond) || !ok(l.bytesPerSecond) || !ok(l.burst?.packets) || !ok(l.burst?.bytes)) {
    throw new AgentVpnError('BAD_LIMITS', 'relay limits must be positive numbers', 'give packets and bytes per second and burst sizes above zero');
  }
  return l;
}
