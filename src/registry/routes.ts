import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import { networkUlaPrefix, overlayIPv6 } from '../identity/addresses.js';
import { formatAddress, formatPrefix, type Prefix } from '../ip/prefix.js';
import { parseKeyStatement, type KeyStatement } from '../identity/rotation.js';
import type { RelayInfo } from '../relay/protocol.js';
import { adminRoute, type AdminContext } from './admin-routes.js';
import { createConsole } from './console/routes.js';
import { parseCapability, type Capability } from '../net/capabilities.js';
import type { EventHub } from './events.js';
import { Entry, type Fleet } from './fleet-state.js';
import { screenChain } from './key-chain.js';
import { readJson, sendJson, sendText, type Body } from './http-body.js';
import { listPage, parsePageRequest } from './list-page.js';
import {
  HEARTBEAT_LABEL, LEAVE_LABEL, hashToken, joinMessage, timestampMessage, verifyAgentSignature, type AgentChangeKind, type JoinResult, type RegistryStats,
} from './protocol.js';
import { NAME_PATTERN, NETWORK_PATTERN } from '../net/names.js';
import { canonicalRecord, verifyRecord, type AgentRecord, type SignedRecord } from './record.js';
import { refuse } from './refusals.js';
import { authorizeRead, checkClock, isAgentId } from './request-auth.js';
import type { RegistryEvents } from './registry-log.js';
import type { SignatureBudget } from './signature-budget.js';
import type { RegistryStore, StoredKeyChain } from './store.js';

/** What the routes work on; server.ts builds it. */
export interface RouteContext {
  store: RegistryStore;
  fleet: Fleet;
  hub: EventHub;
  signatures: SignatureBudget;
  log: Logger;
  defaultNetwork: string;
  pool: Prefix;
  heartbeatIntervalMs: number;
  offlineAfterMs: number;
  /** The relay and STUN servers a joining agent is told about. */
  relayInfo(req: IncomingMessage): { relays: RelayInfo[]; stun: string[] };
  /** Logs a change and pushes it to the network's event streams. */
  emit(network: string, kind: AgentChangeKind, entry: Entry, id: string): void;
  admin: AdminContext;
  /** The registry's own audit log: joins and leaves are on disk before they are answered. */
  events: RegistryEvents;
  /** /v1/audit/* (audit-routes.ts): `what` is the path's last part. */
  audit: { route(req: IncomingMessage, res: ServerResponse, what: string, url: URL, now: number): Promise<void> };
  stats(): RegistryStats;
}

function field<T>(ok: boolean, value: unknown, what: string): T {
  if (!ok) refuse('BAD_REQUEST', `missing or invalid ${what}`);
  return value as T;
}

const isTimestamp = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

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

/** The registry's HTTP API (protocol.ts has the table); returns the request handler. Refusals are thrown. */
export function createRoutes(ctx: RouteContext): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const { store, fleet, hub, log, signatures } = ctx;
  const webConsole = createConsole(ctx);
  /** Refuses unless the agent signed `message`; failures are budgeted per address (signature-budget.ts). */
  const verifySigned = (req: IncomingMessage, id: string, message: Buffer, signature: unknown, what: string) => {
    signatures.check(req);
    if (verifyAgentSignature(id, message, signature, fleet.currentKey(id))) return;
    signatures.failed(req);
    refuse('BAD_SIGNATURE', `${what} does not verify with the agent's current key`);
  };

  const networkParam = (url: URL): string => {
    const network = url.searchParams.get('network') ?? ctx.defaultNetwork;
    if (!NETWORK_PATTERN.test(network)) refuse('BAD_REQUEST', 'invalid network name');
    return network;
  };

  const join = async (req: IncomingMessage, res: ServerResponse, now: number) => {
    const b = await readJson(req);
    const network = field<string>(typeof b.network === 'string' && NETWORK_PATTERN.test(b.network), b.network, 'network');
    const id = field<string>(isAgentId(b.id), b.id, 'id (an agent ID)');
    const name = field<string>(typeof b.name === 'string' && NAME_PATTERN.test(b.name), b.name, 'name (lowercase letters, digits and -, up to 63)');
    const timestamp = field<number>(isTimestamp(b.timestamp), b.timestamp, 'timestamp');
    const token = field<string | undefined>(b.token === undefined || (typeof b.token === 'string' && b.token.length <= 256), b.token, 'token');
    checkClock(timestamp, now);
    if (fleet.isBlocked(network, id)) refuse('BLOCKED', `agent ${id} is blocked in network ${network}`);
    const tokenHash = token === undefined ? null : hashToken(token);
    // A stranger needs a valid token: looked up before its signature is checked.
    if (!fleet.isMember(network, id) && (tokenHash === null || !(await store.checkToken(network, tokenHash, now)).ok)) {
      refuse('BAD_TOKEN', tokenHash === null ? `a join token is needed to join network ${network}` : `the join token is not valid for network ${network} (unknown, expired or used up)`);
    }
    verifySigned(req, id, joinMessage(network, id, name, timestamp), b.signature, 'join signature');
    const result = await store.admit({ network, id, name, tokenHash, timestamp, pool: ctx.pool, now });
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
  const publish = async (req: IncomingMessage, res: ServerResponse, url: URL, id: string, now: number) => {
    const network = networkParam(url);
    if (!fleet.isMember(network, id)) refuse('NOT_JOINED', `agent ${id.slice(0, 80)} has not joined network ${network}`);
    const body: Body = await readJson(req);
    const extra = Object.keys(body).find((k) => k !== 'record' && k !== 'signature' && k !== 'chain');
    if (extra !== undefined) refuse('MALFORMED_RECORD', `unknown field "${extra.slice(0, 40)}" beside record, signature and chain`);
    const signed = body as unknown as SignedRecord;
    const r = (signed.record && typeof signed.record === 'object' ? signed.record : {}) as Partial<AgentRecord>;
    if (r.id !== undefined && r.id !== id) refuse('BAD_REQUEST', 'the record ID differs from the agent ID in the path');
    const recordKey = typeof r.key === 'string' ? r.key : undefined;
    const screen = screenChain(fleet.rotated.get(id), recordKey, body.chain);
    if (!screen.ok) refuse(screen.code, screen.message);
    signatures.check(req);
    const check = verifyRecord({ ...signed, chain: screen.chain }, { network, now });
    // A bad chain may have cost two signature checks per statement it added.
    if (check.problem === 'BAD_SIGNATURE' || check.problem === 'BAD_CHAIN') for (let i = 0; i < Math.max(1, screen.fresh); i++) signatures.failed(req);
    if (!check.ok) refuse(check.problem!, check.detail ?? check.problem!);
    const canonical: SignedRecord = { record: canonicalRecord(signed.record), signature: signed.signature };
    const rotation = newRotation(id, screen.chain, screen.fresh);
    const result = await store.putRecord(network, canonical, now, rotation ?? undefined);
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
  const liveness = async (req: IncomingMessage, res: ServerResponse, url: URL, id: string, now: number, online: boolean) => {
    const network = networkParam(url);
    if (!isAgentId(id)) refuse('BAD_REQUEST', 'invalid agent ID in the path');
    const state = fleet.networks.get(network);
    if (!state?.members.has(id)) refuse('NOT_JOINED', `agent ${id} has not joined network ${network}`);
    const known = state.agents.get(id);
    if (!known) refuse('NOT_FOUND', `agent ${id} has not published a record yet`);
    const b = await readJson(req);
    const timestamp = field<number>(isTimestamp(b.timestamp), b.timestamp, 'timestamp');
    checkClock(timestamp, now);
    if (online && known.view.record.expiresAt <= now) refuse('EXPIRED_RECORD', `the record of agent ${id} has expired: publish a fresh one`);
    verifySigned(req, id, timestampMessage(online ? HEARTBEAT_LABEL : LEAVE_LABEL, network, id, timestamp), b.signature, 'signature');
    const lastSeen = online ? now : known.view.lastSeen;
    const result = await store.setOnline({ network, id, online, lastSeen, timestamp, now });
    if (!result.ok) refuse(result.code, result.message);
    const entry = state.agents.get(id)!; // a publish may have replaced it meanwhile
    const changed = entry.view.online !== online;
    entry.setLiveness(online, lastSeen, true);
    if (changed) ctx.emit(network, online ? 'online' : 'offline', entry, id);
    if (!online) await ctx.events.left(network, id);
    sendJson(res, 200, { ok: true });
  };

  /** One page of the agents matching the query (list-page.ts has the parameters). */
  const listAgents = (url: URL, network: string): { agents: Entry[]; next: string | null } => {
    const capText = url.searchParams.get('cap');
    let cap: Capability | null = null;
    if (capText !== null) {
      try {
        cap = parseCapability(capText);
      } catch (e) {
        refuse('BAD_REQUEST', (e as Error).message);
      }
    }
    const name = url.searchParams.get('name');
    const onlineText = url.searchParams.get('online');
    if (onlineText !== null && !['1', '0', 'true', 'false'].includes(onlineText)) refuse('BAD_REQUEST', 'online must be 1 or 0');
    const online = onlineText === null ? null : onlineText === '1' || onlineText === 'true';
    return listPage(fleet.networks.get(network), { cap, name, online }, parsePageRequest(url));
  };

  const getAgent = (network: string, idOrName: string): Entry => {
    const state = fleet.networks.get(network);
    const id = state?.agents.has(idOrName) ? idOrName : state?.byName.get(idOrName);
    const entry = id === undefined ? undefined : state?.agents.get(id);
    if (!entry) refuse('NOT_FOUND', `no agent "${idOrName.slice(0, 80)}" in network ${network}`);
    return entry;
  };

  const events = async (req: IncomingMessage, res: ServerResponse, url: URL, now: number) => {
    const network = networkParam(url);
    const room = hub.roomFor(null);
    if (!room.ok) refuse(room.code, room.message);
    const credential = await authorizeRead(req, network, now, ctx);
    const state = fleet.net(network);
    const result = hub.subscribe(network, credential.key, res, state.agents.values(), () => state.policyJson, credential.expiresAt);
    if (!result.ok) refuse(result.code, result.message);
  };

  return async (req, res) => {
    const now = Date.now();
    let url: URL;
    try {
      url = new URL(req.url ?? '', 'http://registry');
    } catch {
      refuse('BAD_REQUEST', 'invalid request URL');
    }
    const method = req.method ?? '';
    let parts: string[];
    try {
      parts = url.pathname.split('/').slice(1).map(decodeURIComponent);
    } catch {
      refuse('BAD_REQUEST', 'invalid percent-encoding in the path');
    }
    const allow = (...methods: string[]) => {
      if (!methods.includes(method)) refuse('METHOD_NOT_ALLOWED', `${method} is not allowed on ${url.pathname}`);
    };
    const path = parts.join('/');
    if (path === 'healthz') {
      allow('GET');
      return sendJson(res, 200, { ok: true });
    }
    if (path === 'v1/join') {
      allow('POST');
      return join(req, res, now);
    }
    if (path === 'v1/agents') {
      allow('GET');
      const network = networkParam(url);
      await authorizeRead(req, network, now, ctx);
      const page = listAgents(url, network);
      const next = page.next === null ? '' : `,"next":${JSON.stringify(page.next)}`;
      return sendText(res, 200, `{"ok":true,"agents":[${page.agents.map((e) => e.json).join(',')}]${next}}`);
    }
    if (path === 'v1/events') {
      allow('GET');
      return events(req, res, url, now);
    }
    if (path === 'v1/policy') {
      allow('GET');
      const network = networkParam(url);
      await authorizeRead(req, network, now, ctx);
      return sendText(res, 200, `{"ok":true,"policy":${fleet.net(network).policyJson}}`);
    }
    if (parts[0] === 'console') return webConsole.route(req, res, parts.slice(1), url, now);
    if (parts.length === 4 && parts[0] === 'v1' && parts[1] === 'agents' && parts[3] === 'paths') {
      allow('PUT');
      return webConsole.reportPaths(req, res, url, parts[2], now);
    }
    if (parts[0] === 'v1' && parts[1] === 'admin') return adminRoute(ctx.admin, req, res, parts.slice(2), networkParam(url));
    if (parts.length === 3 && parts[0] === 'v1' && parts[1] === 'audit') return ctx.audit.route(req, res, parts[2], url, now);
    if (path === 'v1/stats') {
      allow('GET');
      await authorizeRead(req, networkParam(url), now, ctx);
      return sendJson(res, 200, { ok: true, ...ctx.stats() });
    }
    if (parts.length === 3 && parts[0] === 'v1' && parts[1] === 'agents' && parts[2] !== '') {
      allow('GET', 'PUT', 'DELETE');
      if (method === 'PUT') return publish(req, res, url, parts[2], now);
      if (method === 'DELETE') return liveness(req, res, url, parts[2], now, false);
      const network = networkParam(url);
      await authorizeRead(req, network, now, ctx);
      return sendText(res, 200, `{"ok":true,"agent":${getAgent(network, parts[2]).json}}`);
    }
    if (parts.length === 4 && parts[0] === 'v1' && parts[1] === 'agents' && parts[3] === 'heartbeat') {
      allow('POST');
      return liveness(req, res, url, parts[2], now, true);
    }
    refuse('NOT_FOUND', `no such endpoint: ${url.pathname.slice(0, 100)}`);
  };
}
