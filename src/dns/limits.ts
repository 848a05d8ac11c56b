import { AgentVpnError } from '../errors.js';

/**
 * What one client may cost the DNS responder. It runs on the daemon's one JavaScript thread,
 * beside the packet loop, so every query is CPU taken from the tunnel and every unread answer
 * is memory: both are bounded per source address and in total, checked before any parsing.
 */
export interface DnsLimits {
  /** Queries per second from one source address, UDP and TCP together. */
  queriesPerSecondPerSource: number;
  /** How far one source may run ahead of its rate. */
  queryBurstPerSource: number;
  /** Queries per second over all sources. */
  queriesPerSecond: number;
  queryBurst: number;
  /** Open TCP connections from one source address. */
  tcpConnectionsPerSource: number;
  /** Open TCP connections over all sources and bound addresses. */
  tcpConnections: number;
  /** Answers on one connection not yet taken by the kernel; beyond it the connection is not read. */
  tcpQueriesInFlight: number;
  /** A connection with no traffic either way for this long is closed. */
  tcpIdleMs: number;
  /** A connection is closed this long after it opened, however busy. */
  tcpLifetimeMs: number;
}

export const DEFAULT_DNS_LIMITS: Readonly<DnsLimits> = {
  // An agent that resolves a name for every new connection (A and AAAA) stays far below; a
  // source flooding at this rate takes ~1% of a core (an answer costs ~10-20 µs here).
  queriesPerSecondPerSource: 500,
  // Start-up lookups of a whole fleet at once pass unthrottled.
  queryBurstPerSource: 1000,
  // All sources together: at most ~5-10% of the core the packet loop runs on.
  queriesPerSecond: 5000,
  queryBurst: 10_000,
  // A resolver uses one or two connections (RFC 7766 6.2.2); the local ones all share the
  // agent's own overlay address as their source, hence some room.
  tcpConnectionsPerSource: 8,
  // Bounds the file descriptors (and buffers) a crowd of clients can hold.
  tcpConnections: 64,
  // Plenty for pipelining stub resolvers; 32 answers are at most ~16 KB buffered per connection.
  tcpQueriesInFlight: 32,
  // RFC 7766 6.2.3 suggests seconds, not minutes. A client that stops reading its answers goes
  // quiet too (we stop reading it), so it is closed after this as well.
  tcpIdleMs: 10_000,
  // A slot is never held forever by one client; reconnecting costs a resolver one handshake.
  tcpLifetimeMs: 120_000,
};

/** The defaults with `overrides` applied; refuses values that are not positive numbers. */
export function resolveDnsLimits(overrides: Partial<DnsLimits> = {}): DnsLimits {
  const limits = { ...DEFAULT_DNS_LIMITS, ...overrides };
  for (const [key, value] of Object.entries(limits)) {
    if (typeof value !== 'number' || !(value > 0)) {
      throw new AgentVpnError('DNS_CONFIG', `invalid DNS limit ${key}: ${String(value)}`, 'DNS limits are positive numbers');
    }
  }
  return limits;
}
