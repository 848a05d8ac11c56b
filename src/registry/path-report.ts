import type { Identity } from '../identity/identity.js';
import { isAgentId } from './request-auth.js';

/**
 * An agent's report of its paths to its peers, for the registry's console: shared by the agent
 * (membership.ts sends it) and the registry (console/path-reports.ts keeps it, in memory only).
 *
 * PUT /v1/agents/ID/paths?network=N, body (JSON, at most MAX_REPORT_BYTES):
 *
 * | field     | type                 | meaning                                                    |
 * | --------- | -------------------- | ---------------------------------------------------------- |
 * | timestamp | integer (ms)         | signed, usable once (like every signed request)            |
 * | paths     | ReportedPath[]       | at most MAX_REPORTED_PATHS, one per peer ID                |
 * | signature | base64 Ed25519       | over PATHS_LABEL \n JSON [network, id, timestamp, paths]   |
 *
 * | ReportedPath | type                  | meaning                                               |
 * | ------------ | --------------------- | ----------------------------------------------------- |
 * | peer         | agent ID              | the peer this path leads to                           |
 * | kind         | "direct" or "relay"   | how packets reach it now                              |
 * | endpoint     | string (ENDPOINT)     | the peer's underlay host:port, or the relay's name    |
 * | rttMs        | number or null        | last measured round trip on that path                 |
 *
 * What the registry does with it: shows it. It is the agent's own claim about its paths, so it
 * proves nothing about the peers; the signature only says which agent made the claim.
 */

export const PATHS_LABEL = 'agentvpn paths v1';
/** A report names this many peers at most (the first ones): a console row, not a fleet dump. */
export const MAX_REPORTED_PATHS = 256;
/** 256 paths of ~170 bytes each fit with room to spare. */
export const MAX_REPORT_BYTES = 64 * 1024;
/** A host:port, [v6]:port, a relay's DNS name:port, or "(no relay)": nothing else is kept. */
const ENDPOINT = /^[A-Za-z0-9.:[\]()_ -]{1,80}$/;
/** RTTs above a minute are not RTTs. */
const MAX_RTT_MS = 60_000;

export interface ReportedPath {
  peer: string;
  kind: 'direct' | 'relay';
  endpoint: string;
  rttMs: number | null;
}

export interface PathReportBody {
  timestamp: number;
  paths: ReportedPath[];
  signature: string;
}

export function pathReportMessage(network: string, id: string, timestamp: number, paths: readonly ReportedPath[]): Buffer {
  return Buffer.from(`${PATHS_LABEL}\n${JSON.stringify([network, id, timestamp, paths])}`);
}

export function signPathReport(identity: Identity, network: string, timestamp: number, paths: ReportedPath[]): PathReportBody {
  const signature = Buffer.from(identity.sign(pathReportMessage(network, identity.id, timestamp, paths))).toString('base64');
  return { timestamp, paths, signature };
}

/** The paths of a report as the registry keeps them (only known fields, in a fixed order), or a reason to refuse it. */
export function parseReportedPaths(v: unknown): { ok: true; paths: ReportedPath[] } | { ok: false; reason: string } {
  if (!Array.isArray(v)) return { ok: false, reason: 'paths is not a list' };
  if (v.length > MAX_REPORTED_PATHS) return { ok: false, reason: `more than ${MAX_REPORTED_PATHS} paths` };
  const paths: ReportedPath[] = [];
  const seen = new Set<string>();
  for (const [i, p] of v.entries()) {
    const o = (p && typeof p === 'object' ? p : {}) as Record<string, unknown>;
    const rtt = o.rttMs;
    if (!isAgentId(o.peer) || seen.has(o.peer)) return { ok: false, reason: `paths[${i}].peer is not an agent ID (or repeats one)` };
    if (o.kind !== 'direct' && o.kind !== 'relay') return { ok: false, reason: `paths[${i}].kind is not direct or relay` };
    if (typeof o.endpoint !== 'string' || !ENDPOINT.test(o.endpoint)) return { ok: false, reason: `paths[${i}].endpoint is not a host:port or relay name` };
    if (!(rtt === null || (typeof rtt === 'number' && Number.isFinite(rtt) && rtt >= 0 && rtt <= MAX_RTT_MS))) return { ok: false, reason: `paths[${i}].rttMs is not null or 0 to ${MAX_RTT_MS}` };
    seen.add(o.peer);
    paths.push({ peer: o.peer, kind: o.kind, endpoint: o.endpoint, rttMs: rtt as number | null });
  }
  return { ok: true, paths };
}
