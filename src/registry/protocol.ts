import { createHash } from 'node:crypto';
import type { Identity } from '../identity/identity.js';
import { verifySignature } from '../identity/identity.js';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import type { KeyStatement } from '../identity/rotation.js';
import type { ConnectionStats } from '../net/connection-guard.js';
import type { RelayInfo } from '../relay/protocol.js';
import type { AgentRecord } from './record.js';

/**
 * The registry's wire protocol, shared by server and client: the exact bytes each signature
 * covers, the Authorization header, the JSON shapes, and the protocol's limits and timings.
 *
 * HTTP/1.1, JSON bodies of at most MAX_BODY_BYTES (an audit ship: MAX_SHIP_BYTES), nested at most MAX_JSON_DEPTH deep;
 * `?network=NAME` names the network (the registry's default without it).
 *
 * Every request is validated against JSON schemas before its handler works on it: the path's
 * parameters, the query and the body (request-schemas.ts has them; route-table.ts is the table of
 * routes that names each one's). A request that fails is refused 400 with a message naming the
 * field (`invalid body: /timestamp must be integer`): BAD_REQUEST, MALFORMED_RECORD for a publish,
 * AUDIT_MALFORMED for a ship. A known path with another method is 405 with an `allow` header.
 *
 * | request                              | authorization                   | body / answer                                  |
 * | ------------------------------------ | ------------------------------- | ---------------------------------------------- |
 * | POST /v1/join                        | body signature (join message)   | JoinRequest → JoinResult                       |
 * | PUT /v1/agents/ID                    | the record's own signature      | SignedRecord (record + signature [+ chain])    |
 * | POST /v1/agents/ID/heartbeat         | body signature (heartbeat msg)  | SignedTimestamp                                |
 * | DELETE /v1/agents/ID                 | body signature (leave message)  | SignedTimestamp                                |
 * | PUT /v1/agents/ID/paths              | body signature (path-report.ts) | PathReportBody → {ok, kept}                    |
 * | POST /v1/sessions                    | Authorization: AgentVPN (signed) | {ok, session, secret, expiresAt}: a read session |
 * | GET /v1/agents[?cap=&name=&online=]  | Authorization header            | {ok, agents: AgentView[], next?}: a page       |
 * |   [&limit=&cursor=] (list-page.ts)   |                                 | (ID order, ≤ 1,000; next: the following's cursor) |
 * | GET /v1/agents/ID-or-NAME            | Authorization header            | {ok, agent: AgentView}                         |
 * | GET /v1/events                       | Authorization header            | text/event-stream (events.ts)                  |
 * | GET /v1/stats                        | Authorization header            | {ok, ...RegistryStats}                         |
 * | GET /v1/policy                       | Authorization header            | {ok, policy: PolicyView | null}                |
 * | /v1/admin/...                        | Bearer <admin token>            | admin-routes.ts                                |
 * | GET /v1/audit/witness                | none                            | {ok, name, publicKey}: the witness key         |
 * | POST /v1/audit/ship?agent=ID         | the body's signed checkpoint    | AuditShip → {ok, size, cosigned}               |
 * | GET /v1/audit/head?agent=ID          | the agent itself, or admin      | {ok, size, cosigned | null}                    |
 * | GET /v1/audit/entries?agent=ID&from= | the agent itself, or admin      | {ok, entries: string[]} (&limit=, ≤ 512)       |
 * | GET /healthz                         | none                            | {ok: true}                                     |
 * | /console, /console/api/...           | admin token, then a session     | the web console (console/routes.ts)            |
 *
 * Audit (audit-routes.ts): an agent ships its log's new entries with its signed checkpoint of the
 * new size and a consistency proof from the size the registry holds; the registry checks them and
 * answers its cosignature (c2sp.org/tlog-cosignature). `agent` is in the query too, so membership
 * and budgets are checked before the body (up to MAX_SHIP_BYTES) is read. 409 AUDIT_GAP carries
 * {held, cosigned | null} (ship again from `held`); 409 AUDIT_INCONSISTENT: a fork, refused and kept
 * as evidence. "The agent itself" is a signed read (the header below) by that agent ID.
 *
 * Authorization header: `AgentVPN <agent ID> <timestamp ms> <base64 signature>` by a member
 * of the network, or `Bearer <join token>` (an operator: valid only while the token could
 * still admit an agent, i.e. neither expired nor used up), or, for reads, `AgentVPN-Session
 * <session ID> <timestamp ms> <base64url HMAC>` under a read session's secret (read-sessions.ts:
 * POST /v1/sessions, signed, answers {session, secret, expiresAt}).
 *
 * | signed message   | bytes (UTF-8, fields separated by "\n")                               |
 * | ---------------- | --------------------------------------------------------------------- |
 * | join             | "agentvpn join v1" \n JSON [network, id, name, timestamp]             |
 * | heartbeat        | "agentvpn heartbeat v2" \n network \n id \n timestamp                  |
 * | leave            | "agentvpn leave v2" \n network \n id \n timestamp                      |
 * | request (header) | "agentvpn request v1" \n METHOD " " path-with-query \n timestamp       |
 * | record           | record.ts canonicalRecordBytes                                        |
 *
 * An agent that rotated its key signs all of these with its current key (the last key of the
 * chain the registry holds for it); its ID still encodes the first one.
 *
 * Every timestamp is within MAX_CLOCK_SKEW_MS of the registry's clock and is taken once per
 * agent (replay-window.ts): the client never signs the same timestamp twice.
 */

/** Requests larger than this are refused (413): a record is at most ~4 KiB, so 64 KiB is generous. */
export const MAX_BODY_BYTES = 64 * 1024;
/**
 * JSON nested deeper than this is refused before it is parsed: the deepest body is a record
 * (object → record → endpoint list, 3 levels); recursion over deeper input could overflow the stack.
 */
export const MAX_JSON_DEPTH = 8;
/** Signed timestamps may be this far from the registry's clock: tolerates unsynced hosts, limits replays. */
export const MAX_CLOCK_SKEW_MS = 5 * 60_000;
/** An agent that has not been heard from for this long is offline (a few missed heartbeats). */
export const DEFAULT_OFFLINE_AFTER_MS = 30_000;
/** Agents heartbeat three times per offline period, so one lost heartbeat never flaps them offline. */
export const HEARTBEATS_PER_OFFLINE_PERIOD = 3;
/** SSE comment keep-alive: keeps proxies and NATs from closing an idle stream, lets clients spot dead ones. */
export const SSE_KEEPALIVE_MS = 15_000;
/** How often the registry looks for agents that went silent (so offline is seen within ~1 s of the timeout). */
export const SWEEP_INTERVAL_MS = 1_000;
/** A client request with no answer for this long fails (REGISTRY_UNREACHABLE); the daemon retries. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
/** Event stream reconnect backoff: quick after a blip, at most every 30 s while the registry is down. */
export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 30_000;
/** A stream with no byte (not even a keep-alive) for this long is dead (half-open TCP): reconnect. */
export const STREAM_IDLE_MS = 3 * SSE_KEEPALIVE_MS;
export const DEFAULT_POOL = '100.64.0.0/10';
/** Entries per ship: a full ship is a few hundred KiB, so a catch-up after an outage takes few requests. */
export const MAX_SHIP_ENTRIES = 512;
/** A ship's body: 512 entries of a few hundred bytes each fit many times over; 1 MiB bounds what one request makes us parse and hash. */
export const MAX_SHIP_BYTES = 1024 * 1024;
/** Entries per read (GET /v1/audit/entries): at most 4 MiB of answer. */
export const MAX_READ_ENTRIES = 512;
export const DEFAULT_NETWORK = 'default';

const JOIN_LABEL = 'agentvpn join v1';
/** v2: the network is signed too, so a heartbeat or leave for one network counts for no other. */
export const HEARTBEAT_LABEL = 'agentvpn heartbeat v2';
export const LEAVE_LABEL = 'agentvpn leave v2';
const REQUEST_LABEL = 'agentvpn request v1';

/** What a registry tells anyone about an agent: its signed record and whether it is online. */
export interface AgentView {
  record: AgentRecord;
  signature: string;
  online: boolean;
  lastSeen: number;
  /** The member's tags, from the token it joined with (set by the operator, not signed by the agent). */
  tags?: string[];
  /** Its key chain from the ID's key to record.key, when it rotated its key. */
  chain?: KeyStatement[];
}

/** A network's policy as the registry serves it (GET /v1/policy, 'policy' events, snapshots). */
export interface PolicyView {
  version: number;
  /** The policy text as the operator wrote it (JSON with comments; policy/parse.ts). */
  policy: string;
}

export interface JoinRequest {
  network: string;
  token?: string;
  id: string;
  name: string;
  timestamp: number;
  signature: string;
}

export interface JoinResult {
  network: string;
  ipv4: string;
  ipv6: string;
  ulaPrefix: string;
  pool: string;
  heartbeatIntervalMs: number;
  offlineAfterMs: number;
  /** Relays the agent may use (the registry's built-in one, unless it runs with --no-relay). */
  relays: RelayInfo[];
  /**
   * STUN servers ("host:port"). The built-in relay lists its port and the next one: the same
   * host on two ports lets an agent see whether its NAT mapping varies by destination.
   */
  stun: string[];
}

/** Body of heartbeat and leave requests: a timestamp signed under the request's label. */
export interface SignedTimestamp {
  timestamp: number;
  signature: string;
}

/** Relay: the counters of the relay run beside the registry (RelayStats, cli/registry-with-relay.ts). */
export interface RegistryStats<Relay = unknown> {
  agents: number;
  online: number;
  refused: Record<string, number>;
  requests: number;
  /** TCP connections: open now; closed at once past a cap (per address, in total); idle ones closed to make room. */
  connections: ConnectionStats;
  /**
   * Event streams: open now; resumed (from a Last-Event-ID, no snapshot); behind now (changes
   * wait for a catch-up pass); characters written but not yet taken by the network; refused past a
   * cap; dropped (stalled, or too many removals waiting); agent views sent by catch-up passes;
   * agent changes held back past the agent's budget (change-pacer.ts), later ones replacing them.
   */
  streams: { open: number; resumed: number; digestResumed: number; behind: number; unsentChars: number; refused: number; dropped: number; caughtUp: number; paced: number };
  /** The built-in relay's counters (sessions, forwarded, hello verifications, drops by reason); null without it. */
  relay: Relay | null;
  /** The witness of agents' audit logs. */
  audit: AuditStats;
  /** On PostgreSQL: the change feed that follows the other instances (pg-change-feed.ts); null on SQLite. */
  changeFeed: ChangeFeedStats | null;
}

/** The PostgreSQL change feed's counters: notifications received, by what became of them. */
export interface ChangeFeedStats {
  connected: boolean;
  received: number;
  /** Written by this instance: skipped unparsed. */
  own: number;
  applied: number;
  /** Applied from what the notification carried, reading nothing. */
  carried: number;
  /** Rows re-read for one change (short form, rename, missing member, longer key chain, older than an action, no key). */
  reads: number;
  malformed: number;
  /** A MAC that does not match: dropped. */
  forged: number;
  /** No MAC while we hold the key: re-read within a budget, dropped past it (actions excepted). */
  unauthenticated: number;
  reconnects: number;
  resyncs: number;
}

export interface AuditStats {
  /** Ships witnessed (stored and cosigned), and the entries they added. */
  ships: number;
  entries: number;
  /** Ships answered 409 AUDIT_GAP. */
  gaps: number;
  /** Ships refused as inconsistent (AUDIT_INCONSISTENT); those past the per-agent or total budget are counted, not kept. */
  refusals: number;
  refusalsNotKept: number;
  /** Ships refused for the agent's budget (AUDIT_RATE_LIMITED). */
  rateLimited: number;
}

/** The registry's witness key (GET /v1/audit/witness): what an agent pins. */
export interface AuditWitnessView {
  name: string;
  /** base64, 32 bytes */
  publicKey: string;
}

/** POST /v1/audit/ship?network=N&agent=ID body. */
export interface AuditShip {
  agent: string;
  /** The seq of entries[0]: the size the registry holds. */
  from: number;
  /** Canonical entry lines for seqs [from, from + entries.length). */
  entries: string[];
  /** The agent's signed checkpoint note of size from + entries.length. */
  checkpoint: string;
  /** base64 hashes: the consistency proof from `from` to the checkpoint's size (empty when from is 0). */
  proof: string[];
}

/** What the registry holds of an agent's log (GET /v1/audit/head; a ship's 200 and 409 AUDIT_GAP answers). */
export interface AuditHeadView {
  size: number;
  /** The newest checkpoint note the registry cosigned, or null. */
  cosigned: string | null;
}

export interface ErrorBody {
  ok: false;
  code: string;
  message: string;
  hint: string;
}

/** Changes to one agent, whose event data is {"agent": AgentView}. */
export type AgentChangeKind = 'upsert' | 'online' | 'offline';
/** Every event after the snapshot: 'removed' data is {"id"}, 'policy' data is a PolicyView. */
export type ChangeKind = AgentChangeKind | 'removed' | 'policy';

function b64(sig: Uint8Array): string {
  return Buffer.from(sig).toString('base64');
}

export function joinMessage(network: string, id: string, name: string, timestamp: number): Buffer {
  return Buffer.from(`${JOIN_LABEL}\n${JSON.stringify([network, id, name, timestamp])}`);
}

export function timestampMessage(label: string, network: string, id: string, timestamp: number): Buffer {
  return Buffer.from(`${label}\n${network}\n${id}\n${timestamp}`);
}

export function requestMessage(method: string, pathWithQuery: string, timestamp: number): Buffer {
  return Buffer.from(`${REQUEST_LABEL}\n${method} ${pathWithQuery}\n${timestamp}`);
}

export function signJoin(identity: Identity, network: string, name: string, timestamp: number, token?: string): JoinRequest {
  const signature = b64(identity.sign(joinMessage(network, identity.id, name, timestamp)));
  return { network, ...(token !== undefined ? { token } : {}), id: identity.id, name, timestamp, signature };
}

export function signTimestamp(identity: Identity, label: string, network: string, timestamp: number): SignedTimestamp {
  return { timestamp, signature: b64(identity.sign(timestampMessage(label, network, identity.id, timestamp))) };
}

/** `Authorization: AgentVPN <id> <timestamp> <signature>` for a read request; the timestamp is usable once. */
export function agentAuthorization(identity: Identity, method: string, pathWithQuery: string, timestamp: number): string {
  return `AgentVPN ${identity.id} ${timestamp} ${b64(identity.sign(requestMessage(method, pathWithQuery, timestamp)))}`;
}

/**
 * Whether `signature` (base64) is the agent's signature over `message`, by `currentKey` (an
 * agent that rotated) or else by the key its ID encodes; false for a malformed ID or signature.
 */
export function verifyAgentSignature(id: string, message: Uint8Array, signature: unknown, currentKey?: Uint8Array): boolean {
  const key = currentKey ?? publicKeyOfAgentId(id);
  if (!key || typeof signature !== 'string' || signature.length > 200) return false;
  return verifySignature(key, message, Buffer.from(signature, 'base64'));
}

export type ParsedAuthorization =
  | { kind: 'agent'; id: string; timestamp: number; signature: string }
  | { kind: 'bearer'; token: string }
  | { kind: 'session'; id: string; timestamp: number; mac: Buffer };

export function parseAuthorization(header: string | undefined): ParsedAuthorization | null {
  if (!header || header.length > 512) return null;
  const parts = header.trim().split(/\s+/);
  if (parts[0] === 'Bearer' && parts.length === 2) return { kind: 'bearer', token: parts[1] };
  if (parts[0] === 'AgentVPN' && parts.length === 4 && /^\d{1,16}$/.test(parts[2])) {
    return { kind: 'agent', id: parts[1], timestamp: Number(parts[2]), signature: parts[3] };
  }
  if (parts[0] === 'AgentVPN-Session' && parts.length === 4 && /^[A-Za-z0-9_-]{22}$/.test(parts[1]) && /^\d{1,16}$/.test(parts[2]) && /^[A-Za-z0-9_-]{43}$/.test(parts[3])) {
    return { kind: 'session', id: parts[1], timestamp: Number(parts[2]), mac: Buffer.from(parts[3], 'base64url') };
  }
  return null;
}

/** Join tokens are stored only as this hash, so a copy of the database cannot be used to join. */
export function hashToken(token: string): string {
  return createHash('sha256').update(`agentvpn token ${token}`).digest('hex');
}
