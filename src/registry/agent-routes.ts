import type { IncomingMessage } from 'node:http';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import { networkUlaPrefix, overlayIPv6 } from '../identity/addresses.js';
import { formatAddress, formatPrefix } from '../ip/prefix.js';
import { parseKeyStatement, type KeyStatement } from '../identity/rotation.js';
import { Entry } from './fleet-state.js';
import { sendJson } from './http-body.js';
import { screenChain } from './key-chain.js';
import {
  HEARTBEAT_LABEL, LEAVE_LABEL, hashToken, joinMessage, timestampMessage, verifyAgentSignature, type JoinRequest, type JoinResult, type SignedTimestamp,
} from './protocol.js';
import { canonicalRecord, verifyRecord, type AgentRecord, type SignedRecord } from './record.js';
import { RecentTokens } from './recent-tokens.js';
import { WriteBudget } from './write-budget.js';
import { refuse } from './refusals.js';
import { checkClock } from './request-auth.js';
import { AGENT_ID_PARAMS, JOIN_BODY, NETWORK_QUERY, PUBLISH_BODY, SIGNED_TIMESTAMP_BODY } from './request-schemas.js';
import type { Route, RouteCall } from './route-table.js';
import type { RouteContext } from './route-context.js';
import type { StoredKeyChain } from './store.js';

/** What an agent writes, each signed by the agent: join, publish, heartbeat, leave. */

/**
 * The chain to store for a verified record: whenever it carries statements the registry does not
 * hold yet, the inception alone included. Holding the inception fixes the pre-committed next key
 * at the first publish, so a thief of the ID's key cannot later publish an inception of his own
 * (committing to a next key he holds) and rotate the identity away.
 */
function newRotation(id: string, chain: readonly unknown[] | undefined, fresh: number): StoredKeyChain | null {
  if (!chain || fresh === 0) return null;
  const statements = chain.map((s) => parseKeyStatement(s)!); // verifyRecord parsed each of them
  return { id, chain: statements, key: statements[statements.length - 1].key };
}

/** A publish's body: the schema admits these fields only. */
type PublishBody = SignedRecord & { chain?: unknown[] };

export function agentRoutes(ctx: RouteContext): Route[] {
  const { store, fleet, hub, log, signatures } = ctx;
  const networkOf = (c: RouteCall) => c.query.network ?? ctx.defaultNetwork;
  const recentTokens = new RecentTokens();
  const writes = new WriteBudget(ctx.heartbeatIntervalMs);
  const checkToken = async (network: string, hash: string, now: number) => {
    const valid = (await store.checkToken(network, hash, now)).ok;
    if (valid) recentTokens.add(network, hash, now);
    return valid;
  };

  /**
   * Refuses unless the agent signed `message` and has writes left (write-budget.ts); failures are
   * budgeted per address (signature-budget.ts). A verified write is spent at once.
   */
  const verifySigned = (req: IncomingMessage, id: string, message: Buffer, signature: string, what: string) => {
    writes.check(id);
    if (!signatures.verified(req, () => verifyAgentSignature(id, message, signature, fleet.currentKey(id)))) {
      refuse('BAD_SIGNATURE', `${what} does not verify with the agent's current key`);
    }
    writes.spend(id);
  };
  /**
   * A replay (a timestamp used, a record no newer than the one held) is anyone's to send: every
   * member sees the others' records. Its write is given back to the agent and charged to the
   * sender's address instead, so no one can replay an agent out of its budget.
   */
  const refundReplay = (req: IncomingMessage, id: string, result: { ok: boolean; code?: string }) => {
    if (result.ok || (result.code !== 'REPLAYED' && result.code !== 'STALE_RECORD')) return;
    writes.refund(id);
    signatures.failed(req);
  };

  const join = async ({ req, res, now, body }: RouteCall) => {
    const { network, id, name, timestamp, token, signature } = await body<JoinRequest>();
    checkClock(timestamp, now);
    if (fleet.isBlocked(network, id)) refuse('BLOCKED', `agent ${id} is blocked in network ${network}`);
    const tokenHash = token === undefined ? null : hashToken(token);
    // A stranger needs a valid token, looked up (or seen valid lately) before its signature is checked.
    if (!fleet.isMember(network, id) && !(tokenHash !== null && (recentTokens.has(network, tokenHash, now) || await checkToken(network, tokenHash, now)))) {
      refuse('BAD_TOKEN', tokenHash === null ? `a join token is needed to join network ${network}` : `the join token is not valid for network ${network} (unknown, expired or used up)`);
    }
    verifySigned(req, id, joinMessage(network, id, name, timestamp), signature, 'join signature');
    const result = await store.admit({ network, id, name, tokenHash, timestamp, pool: ctx.pool, now });
    refundReplay(req, id, result);
    if (tokenHash !== null && ((!result.ok && result.code === 'BAD_TOKEN') || (result.ok && result.usedUpToken))) recentTokens.forget(network, tokenHash);
    if (!result.ok) refuse(result.code, result.message);
    if (result.usedUpToken) hub.closeCredential(`token:${result.usedUpToken}`);
    const before = fleet.net(network).members.get(id);
    fleet.net(network).setMember(result.member);
    await ctx.events.joined(network, result.member, result.created, before !== undefined && before.name !== result.member.name);
    log.info({ network, id, name, ipv4: result.member.ipv4, event: 'join', created: result.created }, 'agent joined');
    const key = publicKeyOfAgentId(id)!;
    const answer: JoinResult = {
      network, ipv4: result.member.ipv4, ipv6: formatAddress(overlayIPv6(network, key)), ulaPrefix: formatPrefix(networkUlaPrefix(network)),
      pool: formatPrefix(ctx.pool), heartbeatIntervalMs: ctx.heartbeatIntervalMs, offlineAfterMs: ctx.offlineAfterMs, ...ctx.relayInfo(req),
    };
    sendJson(res, 200, { ok: true, ...answer });
  };

  /** A member's signed record: only members' bodies are parsed, and only the signed fields are kept. */
  const publish = async (c: RouteCall) => {
    const { req, res, now } = c;
    const network = networkOf(c);
    const id = c.params.id;
    if (!fleet.isMember(network, id)) refuse('NOT_JOINED', `agent ${id} has not joined network ${network}`);
    const signed = await c.body<PublishBody>();
    const r = signed.record as Partial<AgentRecord>;
    if (r.id !== undefined && r.id !== id) refuse('BAD_REQUEST', 'the record ID differs from the agent ID in the path');
    const recordKey = typeof r.key === 'string' ? r.key : undefined;
    const screen = screenChain(fleet.rotated.get(id), recordKey, signed.chain);
    if (!screen.ok) refuse(screen.code, screen.message);
    // A record no newer than the one held is refused before its signature is checked: any member
    // could replay another's record (it is in every list) to spend that agent's budget.
    const held = fleet.net(network).agents.get(id)?.view.record.seq;
    if (held !== undefined && typeof r.seq === 'number' && r.seq <= held) refuse('STALE_RECORD', `agent ${id} already published seq ${held}; publish a higher one`);
    signatures.check(req);
    writes.check(id);
    const check = verifyRecord({ ...signed, chain: screen.chain }, { network, now });
    // A bad chain may have cost two signature checks per statement it added.
    if (check.problem === 'BAD_SIGNATURE' || check.problem === 'BAD_CHAIN') for (let i = 0; i < Math.max(1, screen.fresh); i++) signatures.failed(req);
    if (!check.ok) refuse(check.problem!, check.detail ?? check.problem!);
    writes.spend(id);
    const canonical: SignedRecord = { record: canonicalRecord(signed.record), signature: signed.signature };
    const rotation = newRotation(id, screen.chain, screen.fresh);
    const result = await store.putRecord(network, canonical, now, rotation ?? undefined);
    refundReplay(req, id, result);
    if (!result.ok) refuse(result.code, result.message);
    // Concurrent publishes may finish out of order: keep the longest chain (the store did too).
    if (rotation && rotation.chain.length > (fleet.rotated.get(id)?.chain.length ?? 0)) {
      fleet.setRotated(id, Buffer.from(rotation.key, 'base64'), rotation.chain as KeyStatement[]);
      if (rotation.chain.length > 1) log.info({ network, id, keySeq: rotation.chain.length - 1, event: 'key-rotated' }, 'agent key rotated');
    }
    // An operator removed it while the record was being stored: it must not come back in memory.
    if (!fleet.isMember(network, id)) refuse('NOT_JOINED', `agent ${id} was removed from network ${network}`);
    const state = fleet.net(network);
    state.setMember(result.member);
    const old = state.agents.get(id);
    // Concurrent publishes may finish out of order: the store took the newest, keep that one.
    if (!old || old.view.record.seq < canonical.record.seq) {
      const entry = new Entry({
        record: canonical.record, signature: canonical.signature, online: true, lastSeen: now, tags: result.member.tags, chain: fleet.rotated.get(id)?.chain,
      });
      state.setAgent(id, entry);
      ctx.emit(network, 'upsert', entry, id);
    }
    sendJson(res, 200, { ok: true });
  };

  /** Heartbeat (online) and leave (offline): a signed timestamp from the agent itself, usable once. */
  const liveness = (online: boolean) => async (c: RouteCall) => {
    const { req, res, now } = c;
    const network = networkOf(c);
    const id = c.params.id;
    const state = fleet.networks.get(network);
    if (!state?.members.has(id)) refuse('NOT_JOINED', `agent ${id} has not joined network ${network}`);
    const known = state.agents.get(id);
    if (!known) refuse('NOT_FOUND', `agent ${id} has not published a record yet`);
    const { timestamp, signature } = await c.body<SignedTimestamp>();
    checkClock(timestamp, now);
    if (online && known.view.record.expiresAt <= now) refuse('EXPIRED_RECORD', `the record of agent ${id} has expired: publish a fresh one`);
    verifySigned(req, id, timestampMessage(online ? HEARTBEAT_LABEL : LEAVE_LABEL, network, id, timestamp), signature, 'signature');
    const lastSeen = online ? now : known.view.lastSeen;
    const result = await store.setOnline({ network, id, online, lastSeen, timestamp, now });
    refundReplay(req, id, result);
    if (!result.ok) refuse(result.code, result.message);
    const entry = state.agents.get(id)!; // a publish may have replaced it meanwhile
    const changed = entry.view.online !== online;
    entry.setLiveness(online, lastSeen, true);
    if (changed) ctx.emit(network, online ? 'online' : 'offline', entry, id);
    if (!online) await ctx.events.left(network, id);
    sendJson(res, 200, { ok: true });
  };

  const signedTimestamp = { params: AGENT_ID_PARAMS, query: NETWORK_QUERY, body: SIGNED_TIMESTAMP_BODY };
  return [
    { method: 'POST', path: '/v1/join', body: JOIN_BODY, handle: join },
    { method: 'PUT', path: '/v1/agents/:id', params: AGENT_ID_PARAMS, query: NETWORK_QUERY, body: PUBLISH_BODY, invalidBody: 'MALFORMED_RECORD', handle: publish },
    { method: 'POST', path: '/v1/agents/:id/heartbeat', ...signedTimestamp, handle: liveness(true) },
    { method: 'DELETE', path: '/v1/agents/:id', ...signedTimestamp, handle: liveness(false) },
  ];
}
