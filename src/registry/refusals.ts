import { AgentVpnError } from '../errors.js';
import { MAX_BODY_BYTES, MAX_CLOCK_SKEW_MS, MAX_SHIP_BYTES, MAX_SHIP_ENTRIES } from './protocol.js';

/** HTTP status and the hint sent with every refusal code. */
export const REFUSALS: Record<string, { status: number; hint: string }> = {
  BAD_REQUEST: { status: 400, hint: 'send a JSON body with the fields the registry API documents' },
  PAYLOAD_TOO_LARGE: { status: 413, hint: `request bodies are limited to ${MAX_BODY_BYTES / 1024} KiB` },
  UNAUTHORIZED: { status: 401, hint: 'sign the request as a joined agent (Authorization: AgentVPN ...) or send a join token of the network that is neither expired nor used up (Authorization: Bearer ...)' },
  SESSION_UNKNOWN: { status: 401, hint: 'open a new read session (POST /v1/sessions, signed); RegistryClient does this by itself' },
  REPLAYED: { status: 401, hint: 'every signed request is usable once: sign a fresh one (the agentvpn client does); if this agent runs twice with one identity, stop one' },
  BAD_TOKEN: { status: 403, hint: 'a new agent needs a valid join token: create one with `agentvpn registry token create` and pass it with --token' },
  BAD_SIGNATURE: { status: 403, hint: "the request must be signed by the key encoded in the agent ID; check the agent's identity key" },
  KEY_MISMATCH: { status: 403, hint: "the record's WireGuard key and IPv6 address must be the ones derived from the agent's key" },
  MALFORMED_RECORD: { status: 400, hint: 'publish a complete agent record in canonical form, with only its signed fields' },
  EXPIRED_RECORD: { status: 400, hint: 'sign a fresh record with a future expiresAt' },
  WRONG_NETWORK: { status: 400, hint: 'publish the record to the network it names' },
  CLOCK_SKEW: { status: 400, hint: `timestamps must be within ${MAX_CLOCK_SKEW_MS / 60_000} minutes of the registry's clock: synchronise the host clock (NTP)` },
  NOT_JOINED: { status: 403, hint: 'join the network first (POST /v1/join)' },
  NAME_TAKEN: { status: 409, hint: 'names are unique per network: choose another --name' },
  STALE_RECORD: { status: 409, hint: 'publish a record with a higher seq than the last one' },
  ADDRESS_MISMATCH: { status: 409, hint: 'use the IPv4 address the registry allocated at join' },
  NOT_FOUND: { status: 404, hint: 'check the path, the agent ID or name, and the network' },
  METHOD_NOT_ALLOWED: { status: 405, hint: 'check the HTTP method for this path' },
  RATE_LIMITED: { status: 429, hint: 'too many requests with signatures that do not verify: check the agent identity key and retry in a second' },
  AGENT_RATE_LIMITED: { status: 429, hint: 'the registry answers each agent (and each join token) at a bounded rate: writes 30 at once, then 4 per heartbeat interval; reads ~100 a second, a list costing one more per 100 agents it sends (docs/registry.md): wait the time the message says, page lists with a filter, keep one event stream; if this agent runs twice with one identity, stop one' },
  TOO_MANY_STREAMS: { status: 429, hint: 'an agent needs one event stream: close the others (or wait until half-open ones time out)' },
  STREAMS_FULL: { status: 503, hint: 'the registry serves as many event streams as it may; retry later (the client backs off), or run it with a higher stream limit' },
  POOL_EXHAUSTED: { status: 503, hint: 'the network has used every address of its IPv4 pool; start the registry with a larger --pool' },
  BLOCKED: { status: 403, hint: 'an operator blocked this agent ID in the network; it cannot join it again' },
  AGENT_NOT_FOUND: { status: 404, hint: 'give the name or ID of a member: GET /v1/admin/agents lists them' },
  BAD_NETWORK: { status: 400, hint: 'network names are lowercase letters, digits and -, up to 63' },
  POLICY_INVALID: { status: 400, hint: 'write the policy as JSON (// and /* */ comments allowed); see docs/policy.md' },
  BAD_CHAIN: { status: 403, hint: "a record signed by a rotated key needs the agent's key chain from its ID key to that key (agentvpn key rotate makes it)" },
  CHAIN_FORK: { status: 409, hint: 'the key chain must extend the one the registry holds: publish the newest chain of this identity' },
  STALE_KEY: { status: 403, hint: "sign with the agent's current key: the registry holds a key chain that rotated past this one" },
  AUDIT_MALFORMED: { status: 400, hint: `ship {agent, from, entries (1 to ${MAX_SHIP_ENTRIES} canonical entry lines), checkpoint, proof} in at most ${MAX_SHIP_BYTES / 1024} KiB, as the agentvpn shipper does` },
  AUDIT_BAD_SIGNATURE: { status: 403, hint: "the checkpoint must be signed by a key of the agent's key chain the registry holds: after a key rotation, publish the record with the new chain first" },
  AUDIT_GAP: { status: 409, hint: 'ship again from the size the registry holds (`held`)' },
  AUDIT_INCONSISTENT: { status: 409, hint: "the agent's log is not an extension of the one the registry witnessed (rewritten or forked history): the refusal is kept as evidence; compare the agent's audit directory with `agentvpn registry audit refusals`" },
  AUDIT_RATE_LIMITED: { status: 429, hint: 'the registry takes each agent\'s log at a bounded rate: ship again in a few seconds (the entries stay queued in the log)' },
  CONSOLE_LOGIN: { status: 401, hint: 'log in to the console with an admin token (agentvpn registry admin-token create); sessions end after 12 h, at logout and when the registry restarts' },
  CROSS_SITE: { status: 403, hint: 'the console takes state-changing requests only from its own page (same origin, with the X-AgentVPN-Console header)' },
  INTERNAL: { status: 500, hint: 'this is a bug in the agentvpn registry; see its log' },
};

/** A refusal whose answer carries more fields than {code, message, hint} (409 AUDIT_GAP's `held`). */
export class Refusal extends AgentVpnError {
  constructor(code: string, message: string, readonly extra: Record<string, unknown>) {
    super(code, message, REFUSALS[code]?.hint ?? REFUSALS.INTERNAL.hint);
  }

  override toJSON(): { ok: false; code: string; message: string; hint: string } {
    return { ...this.extra, ...super.toJSON() };
  }
}

export function refuse(code: string, message: string): never {
  throw new AgentVpnError(code, message, REFUSALS[code]?.hint ?? REFUSALS.INTERNAL.hint);
}
