import type { IncomingMessage } from 'node:http';
import type { Logger } from 'pino';
import { cosign } from '../audit/cosignature.js';
import { AuditShipBudget } from './audit-budget.js';
import { agentLogVerifiers, checkShip, openShipCheckpoint, parseShipBody } from './audit-ship.js';
import { EventLimit } from '../util/event-limit.js';
import type { Fleet } from './fleet-state.js';
import { sendJson } from './http-body.js';
import { MAX_READ_ENTRIES, MAX_SHIP_BYTES, parseAuthorization, type AuditHeadView, type AuditStats } from './protocol.js';
import { Refusal, refuse } from './refusals.js';
import { authorizeRead } from './request-auth.js';
import { AUDIT_READ_QUERY, AUDIT_SHIP_BODY, AUDIT_SHIP_QUERY } from './request-schemas.js';
import type { Route, RouteCall } from './route-table.js';
import { SignatureBudget } from './signature-budget.js';
import type { AuditRefusal, RegistryStore } from './store.js';
import type { WitnessKey } from './witness-key.js';

/**
 * The registry as the witness of agents' audit logs (the wire is in protocol.ts's table):
 *
 * | request                                    | checks, in order                                                  |
 * | ------------------------------------------ | ----------------------------------------------------------------- |
 * | GET /v1/audit/witness                      | none: the witness key is public                                   |
 * | POST /v1/audit/ship?network=N&agent=ID     | ID a member of N; the address's and the agent's budgets; body     |
 * |                                            | size; body shape; checkpoint signature (a key of the ID's chain);  |
 * |                                            | from = held size (else 409 AUDIT_GAP); consistency proof; entries |
 * |                                            | hashed into the held compact range = the checkpoint root (else    |
 * |                                            | 409 AUDIT_INCONSISTENT, kept as a refusal); store; cosign         |
 * | GET /v1/audit/head?agent=ID                | admin token, or a signed read by ID itself (a member of N)         |
 * | GET /v1/audit/entries?agent=ID&from&limit  | the same                                                          |
 *
 * A ship that fails before its signature verified (malformed, or not the agent's) spends the
 * address's failure budget, which is checked before the body is read: the body of a stranger
 * claiming a member's ID costs at most a read and a JSON parse, a few per second per address.
 */

/** Failures (malformed or unsigned ships) per second from one address: a misbehaving shipper retries at 1/s. */
const FAILURES_PER_ADDRESS = 4;
/** From everyone: at most ~20 MiB of junk parsed per second. */
const FAILURES_TOTAL = 20;
/** Refusals kept per agent per hour: enough evidence of a fork, not a disk flood from a member that forks on purpose. */
const REFUSALS_KEPT_PER_AGENT = 10;
const REFUSALS_KEPT_TOTAL = 1_000;
const HOUR_MS = 3_600_000;
/** Agents whose refusals are tallied per hour (members only reach this). */
const REFUSAL_KEYS = 10_000;

export interface AuditContext {
  store: RegistryStore;
  fleet: Fleet;
  witness: WitnessKey;
  /** The registry's failed-signature budget (signed reads share it with the other reads). */
  signatures: SignatureBudget;
  /** Refuses a request without a valid admin token (and records admin logins). */
  authorizeAdmin(req: IncomingMessage): Promise<void>;
  /** A refusal was kept; resolves once the registry's own log has it. */
  refusalKept(r: AuditRefusal, skipped: number): Promise<void>;
  defaultNetwork: string;
  log: Logger;
}

export function createAuditRoutes(ctx: AuditContext) {
  const { store, fleet, witness, log } = ctx;
  const failures = new SignatureBudget({ perAddress: FAILURES_PER_ADDRESS, total: FAILURES_TOTAL, what: 'audit ships that are malformed or not signed by their agent' });
  const budget = new AuditShipBudget();
  const keptRefusals = new EventLimit({ perKey: REFUSALS_KEPT_PER_AGENT, total: REFUSALS_KEPT_TOTAL, windowMs: HOUR_MS, maxKeys: REFUSAL_KEYS });
  const counters = { ships: 0, entries: 0, gaps: 0, refusals: 0 };

  const networkOf = (c: RouteCall) => c.query.network ?? ctx.defaultNetwork;

  const gap = (held: AuditHeadView, from: number): never => {
    counters.gaps++;
    throw new Refusal('AUDIT_GAP', `the registry holds ${held.size} entries of this log, not ${from}`, { held: held.size, cosigned: held.cosigned });
  };

  /** Keeps a refusal (within its budget) and refuses the ship. */
  const inconsistent = async (r: Omit<AuditRefusal, 'id'>): Promise<never> => {
    counters.refusals++;
    const take = keptRefusals.take(r.agent, r.at);
    log.warn({ event: 'audit-refused', agent: r.agent, network: r.network, held: r.held, size: r.size, kept: take !== null, reason: r.reason }, 'audit ship refused: inconsistent with the witnessed log');
    if (take) {
      const id = await store.addAuditRefusal(r);
      await ctx.refusalKept({ ...r, id }, take.skipped);
    }
    refuse('AUDIT_INCONSISTENT', r.reason);
  };

  const ship = async (c: RouteCall) => {
    const { req, res, now } = c;
    const network = networkOf(c);
    const agent = c.query.agent!;
    if (!fleet.isMember(network, agent)) refuse('NOT_JOINED', `agent ${agent} has not joined network ${network}`);
    failures.check(req, now);
    budget.check(agent);
    let body;
    let opened;
    try {
      body = parseShipBody(await c.body(), agent);
      opened = openShipCheckpoint(body.checkpoint, agent, agentLogVerifiers(agent, fleet.rotated.get(agent)?.chain));
    } catch (e) {
      failures.failed(req, now);
      throw e;
    }
    budget.spend(agent, body.entries.reduce((n, line) => n + line.length, body.checkpoint.length));
    const held = await store.auditHead(agent);
    if (body.from !== held.size) gap(held, body.from);
    const check = checkShip(body, opened.checkpoint, held);
    if (!check.ok) {
      return inconsistent({ agent, network, at: now, code: 'AUDIT_INCONSISTENT', reason: check.reason, held: held.size, size: opened.checkpoint.size, checkpoint: opened.note });
    }
    const cosigned = cosign(opened.note, { name: witness.name, key: witness.key }, Math.floor(now / 1000));
    const stored = await store.appendAudit({ agent, from: body.from, entries: check.entries, frontier: check.frontier, cosigned, now });
    // Another ship of this agent was stored since we read the head.
    if (!stored.ok) gap({ size: stored.held, cosigned: stored.cosigned }, body.from);
    counters.ships++;
    counters.entries += check.entries.length;
    log.debug({ event: 'audit-shipped', agent, from: body.from, size: opened.checkpoint.size }, 'audit entries witnessed');
    sendJson(res, 200, { ok: true, size: opened.checkpoint.size, cosigned });
  };

  /** Reads of an agent's log: an admin, or the agent itself by a signed read. */
  const authorizeAuditRead = async (c: RouteCall, agent: string) => {
    const auth = parseAuthorization(c.req.headers.authorization);
    if (auth?.kind === 'bearer') return ctx.authorizeAdmin(c.req);
    // Only a signed request names the agent that reads: a read session does not, so it is not enough here.
    if (auth?.kind !== 'agent' || auth.id !== agent) refuse('UNAUTHORIZED', 'an agent may read only its own audit log, with a signed request (an operator: use an admin token)');
    await authorizeRead(c.req, networkOf(c), c.now, ctx);
  };

  /** A query integer the schema let through as up to 16 digits. */
  const intParam = (c: RouteCall, name: string, fallback: number, max: number): number => {
    const text = c.query[name];
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isSafeInteger(n) || n > max) refuse('BAD_REQUEST', `${name} is not a whole number up to ${max}`);
    return n;
  };

  const head = async (c: RouteCall) => {
    const agent = c.query.agent!;
    await authorizeAuditRead(c, agent);
    const held = await store.auditHead(agent);
    sendJson(c.res, 200, { ok: true, size: held.size, cosigned: held.cosigned });
  };

  const entries = async (c: RouteCall) => {
    const agent = c.query.agent!;
    await authorizeAuditRead(c, agent);
    const from = intParam(c, 'from', 0, Number.MAX_SAFE_INTEGER);
    const limit = intParam(c, 'limit', MAX_READ_ENTRIES, MAX_READ_ENTRIES);
    sendJson(c.res, 200, { ok: true, entries: (await store.auditEntries(agent, from, limit)).map((e) => e.line) });
  };

  const routes: Route[] = [
    { method: 'GET', path: '/v1/audit/witness', handle: ({ res }) => sendJson(res, 200, { ok: true, name: witness.name, publicKey: witness.publicKey.toString('base64') }) },
    // A malformed ship keeps its own code (AUDIT_MALFORMED) and spends the failure budget (ship's catch).
    { method: 'POST', path: '/v1/audit/ship', query: AUDIT_SHIP_QUERY, body: AUDIT_SHIP_BODY, maxBodyBytes: MAX_SHIP_BYTES, invalidBody: 'AUDIT_MALFORMED', handle: ship },
    { method: 'GET', path: '/v1/audit/head', query: AUDIT_READ_QUERY, handle: head },
    { method: 'GET', path: '/v1/audit/entries', query: AUDIT_READ_QUERY, handle: entries },
  ];

  const stats = (): AuditStats => ({
    ...counters, refusalsNotKept: keptRefusals.skippedTotal, rateLimited: budget.refused,
  });
  return { routes, stats };
}
