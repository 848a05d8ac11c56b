import type { IncomingMessage } from 'node:http';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import type { Fleet } from './fleet-state.js';
import { MAX_CLOCK_SKEW_MS, hashToken, parseAuthorization, requestMessage, verifyAgentSignature } from './protocol.js';
import { refuse } from './refusals.js';
import type { SignatureBudget } from './signature-budget.js';
import type { ReadSessions } from './read-sessions.js';
import type { RegistryStore } from './store.js';

/**
 * Who may read: a member of the network, by a signed request usable once, or a holder of a
 * join token of the network that could still admit an agent. The cheap checks (header shape,
 * clock, membership, the failed-signature budget) come before the signature, and the signature
 * before the database write that takes the timestamp, so a stranger's flood costs little.
 */

/** Who a read was authorized for: event streams are counted per credential and closed when it ends. */
export interface Credential {
  /** "agent:ID" or "token:HASH". */
  key: string;
  /** When the credential stops being valid (a join token's expiry), or null. */
  expiresAt: number | null;
}

export const isAgentId = (v: unknown): v is string => typeof v === 'string' && publicKeyOfAgentId(v) !== null;

/** Refuses a signed timestamp too far from our clock (it could not be told from a replay for long). */
export function checkClock(timestamp: number, now: number): void {
  if (Math.abs(now - timestamp) > MAX_CLOCK_SKEW_MS) refuse('CLOCK_SKEW', `timestamp is ${Math.round((timestamp - now) / 1000)} s from the registry's clock`);
}

/** What authorizing a read needs; without `sessions`, session reads are refused (SESSION_UNKNOWN). */
export interface ReadAuthority {
  store: RegistryStore;
  fleet: Fleet;
  signatures: SignatureBudget;
  sessions?: ReadSessions;
}

/** The key an agent signs with now: the one it rotated to, or the one its ID encodes. */
export function currentKeyOf(fleet: Fleet, agent: string): Buffer {
  return Buffer.from(fleet.currentKey(agent) ?? publicKeyOfAgentId(agent)!);
}

export async function authorizeRead(req: IncomingMessage, network: string, now: number, { store, fleet, signatures, sessions }: ReadAuthority): Promise<Credential> {
  const auth = parseAuthorization(req.headers.authorization);
  if (!auth) refuse('UNAUTHORIZED', 'missing or malformed Authorization header');
  if (auth.kind === 'session') {
    // No signature and no database write: a MAC and the session's window in memory (read-sessions.ts).
    checkClock(auth.timestamp, now);
    const checked = sessions?.check(auth.id, network, req.method ?? '', req.url ?? '', auth.timestamp, auth.mac, now)
      ?? { ok: false as const, code: 'SESSION_UNKNOWN' as const, message: 'this registry does not keep read sessions here' };
    if (!checked.ok) refuse(checked.code, checked.message);
    if (!fleet.isMember(network, checked.agent)) refuse('NOT_JOINED', `agent ${checked.agent} is no longer a member of network ${network}`);
    if (!checked.key.equals(currentKeyOf(fleet, checked.agent))) refuse('SESSION_UNKNOWN', 'the agent rotated its key since it opened this read session: open a new one');
    return { key: `agent:${checked.agent}`, expiresAt: null };
  }
  if (auth.kind === 'bearer') {
    const hash = hashToken(auth.token);
    const token = await store.checkToken(network, hash, now);
    if (!token.ok) refuse('UNAUTHORIZED', `the bearer token is not a valid join token of network ${network} (unknown, expired or used up)`);
    return { key: `token:${hash}`, expiresAt: token.expiresAt };
  }
  if (!isAgentId(auth.id)) refuse('UNAUTHORIZED', 'Authorization names an invalid agent ID');
  checkClock(auth.timestamp, now);
  if (!fleet.isMember(network, auth.id)) refuse('NOT_JOINED', `agent ${auth.id} has not joined network ${network}`);
  const message = requestMessage(req.method ?? '', req.url ?? '', auth.timestamp);
  if (!signatures.verified(req, () => verifyAgentSignature(auth.id, message, auth.signature, fleet.currentKey(auth.id)))) {
    refuse('UNAUTHORIZED', 'the request signature does not verify');
  }
  const used = await store.useTimestamp(auth.id, auth.timestamp, now);
  if (!used.ok) refuse(used.code, used.message);
  return { key: `agent:${auth.id}`, expiresAt: null };
}
