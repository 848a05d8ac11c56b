import { readFileSync } from 'node:fs';

/**
 * What the registry lets a client hold: connections and event streams, per client and in
 * total, and how long a connection may take for its request. A client past a cap is closed or
 * refused at once, before any work is done for it.
 */
export interface RegistryLimits {
  /** TCP connections one client address (an IPv4 address, an IPv6 /64) may hold at once. */
  connectionsPerAddress: number;
  /** TCP connections in all; past it the longest-idle connection is closed for the new one. */
  connections: number;
  /** Event streams one credential (an agent, a join token) may hold at once. */
  streamsPerCredential: number;
  /** Event streams in all. */
  streams: number;
}

/**
 * One address may be a NAT with a site of agents behind it: each holds an event stream, a
 * keep-alive request connection and perhaps a relay TCP connection, so 256 fits ~80 agents,
 * and one address still cannot take more than a sliver of the total.
 */
export const CONNECTIONS_PER_ADDRESS = 256;
/**
 * Descriptors kept free below the process limit: the database and its WAL (3), the relay and
 * STUN sockets, the log, Node's own (~20), and room for connections that are being accepted
 * and closed at the cap. A tenth more covers bursts on large limits.
 */
const RESERVED_FDS = 64;
const RESERVED_FDS_FRACTION = 0.1;
/** Where /proc/self/limits cannot be read (not Linux): Node's usual soft limit. */
const FALLBACK_FD_LIMIT = 1024;
/**
 * An agent needs one stream; a few more cover reconnects while its old, half-open stream has
 * not yet timed out on our side.
 */
const STREAMS_PER_CREDENTIAL = 4;
/** A fleet of 10,000 agents, each with its stream (the size the registry is benchmarked at). */
const STREAMS = 10_000;

/**
 * A keep-alive connection with no request for this long is closed: two heartbeat intervals and
 * 5 s, so an agent's heartbeats reuse one connection (a new one costs the registry ~0.1–0.3 ms of
 * CPU on TCP alone, and a TLS handshake under HTTPS) while a client that went away lets go of
 * it. An idle one is the first to go when a cap is reached (connection-guard.ts). At most 2
 * minutes: heartbeats further apart gain little from a kept connection, and Node's timers take
 * no more than 2^31 ms.
 */
export function keepAliveTimeoutMs(heartbeatIntervalMs: number): number {
  return Math.min(2 * heartbeatIntervalMs + 5_000, MAX_KEEP_ALIVE_TIMEOUT_MS);
}
const MAX_KEEP_ALIVE_TIMEOUT_MS = 120_000;
/** How long the registry's stop() waits for connections it has just closed (a stuck one never holds shutdown). */
export const STOP_GRACE_MS = 2_000;

/** The soft RLIMIT_NOFILE of this process. */
export function fdLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m) return m[1] === 'unlimited' ? 1 << 20 : Number(m[1]);
  } catch {
    // Not Linux: assume the common default.
  }
  return FALLBACK_FD_LIMIT;
}

export function defaultLimits(maxFds = fdLimit()): RegistryLimits {
  const connections = Math.max(16, maxFds - RESERVED_FDS - Math.floor(maxFds * RESERVED_FDS_FRACTION));
  return {
    connectionsPerAddress: Math.min(CONNECTIONS_PER_ADDRESS, connections),
    connections,
    streamsPerCredential: STREAMS_PER_CREDENTIAL,
    streams: Math.min(STREAMS, connections),
  };
}
