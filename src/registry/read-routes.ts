import { parseCapability, type Capability } from '../net/capabilities.js';
import type { Entry } from './fleet-state.js';
import { sendJson, sendText } from './http-body.js';
import { listPage, parsePageRequest } from './list-page.js';
import { refuse } from './refusals.js';
import { hashToken, parseAuthorization } from './protocol.js';
import { ReadBudget } from './read-budget.js';
import { ReadSessions } from './read-sessions.js';
import { authorizeRead, currentKeyOf, isAgentId, type Credential } from './request-auth.js';
import { LIST_QUERY, NAME_OR_ID_PARAMS, NETWORK_QUERY } from './request-schemas.js';
import type { Route, RouteCall } from './route-table.js';
import type { RouteContext } from './route-context.js';
import { VIEW_DIGEST_HEADER } from './view-digest.js';

/** What members (and holders of a join token) read: agents, events, the policy, stats; and /healthz. */

export function readRoutes(ctx: RouteContext): Route[] {
  const { fleet, hub } = ctx;
  const sessions = new ReadSessions();
  const authority = { store: ctx.store, fleet, signatures: ctx.signatures, sessions };
  const reads = new ReadBudget();
  const networkOf = (c: RouteCall) => c.query.network ?? ctx.defaultNetwork;
  /**
   * The reader's credential, within its read budget (read-budget.ts): an agent or token is refused
   * before its signature or token is checked; a session, whose agent only its MAC shows, after.
   * The read is spent then; `sent` spends what its answer sends (a page's agents, a snapshot).
   */
  const budgeted = async (c: RouteCall, network: string, stream = false) => {
    const auth = parseAuthorization(c.req.headers.authorization);
    const claimed = auth?.kind === 'agent' && isAgentId(auth.id) ? `agent:${auth.id}` : auth?.kind === 'bearer' ? `token:${hashToken(auth.token)}` : null;
    if (claimed !== null) reads.check(claimed, { stream });
    const credential: Credential = await authorizeRead(c.req, network, c.now, authority);
    if (claimed === null) reads.check(credential.key, { stream });
    reads.spend(credential.key, { signed: auth?.kind === 'agent' });
    return { credential, sent: (answer: { agents?: number; snapshot?: boolean }) => reads.sent(credential.key, answer) };
  };
  /** The network, once the reader is authorized for it (and its read spent). */
  const authorized = async (c: RouteCall) => {
    const network = networkOf(c);
    await budgeted(c, network);
    return network;
  };

  /** A read session (read-sessions.ts), for a member's signed request only: a session cannot extend itself. */
  const openSession = async (c: RouteCall) => {
    if (parseAuthorization(c.req.headers.authorization)?.kind !== 'agent') refuse('UNAUTHORIZED', 'a read session is opened with a signed request (Authorization: AgentVPN ...)');
    const network = networkOf(c);
    const { credential } = await budgeted(c, network);
    const agent = credential.key.slice('agent:'.length);
    const session = sessions.open(agent, network, currentKeyOf(fleet, agent), c.now);
    sendJson(c.res, 200, { ok: true, session: session.id, secret: session.secret.toString('base64'), expiresAt: session.expiresAt });
  };

  /** One page of the agents matching the query (list-page.ts has the parameters). */
  const listAgents = async (c: RouteCall) => {
    const network = networkOf(c);
    const { sent } = await budgeted(c, network);
    const { cap: capText, name, online } = c.query;
    let cap: Capability | null = null;
    if (capText !== undefined) {
      try {
        cap = parseCapability(capText);
      } catch (e) {
        refuse('BAD_REQUEST', (e as Error).message);
      }
    }
    const filter = { cap, name: name ?? null, online: online === undefined ? null : online === '1' || online === 'true' };
    const page = listPage(fleet.networks.get(network), filter, parsePageRequest(c.url));
    sent({ agents: page.agents.length });
    const next = page.next === null ? '' : `,"next":${JSON.stringify(page.next)}`;
    sendText(c.res, 200, `{"ok":true,"agents":[${page.agents.map((e) => e.json).join(',')}]${next}}`);
  };

  const getAgent = async (c: RouteCall) => {
    const network = await authorized(c);
    const idOrName = c.params.id;
    const state = fleet.networks.get(network);
    const id = state?.agents.has(idOrName) ? idOrName : state?.byName.get(idOrName);
    const entry: Entry | undefined = id === undefined ? undefined : state?.agents.get(id);
    if (!entry) refuse('NOT_FOUND', `no agent "${idOrName}" in network ${network}`);
    sendText(c.res, 200, `{"ok":true,"agent":${entry.json}}`);
  };

  const events = async (c: RouteCall) => {
    const network = networkOf(c);
    const room = hub.roomFor(null);
    if (!room.ok) refuse(room.code, room.message);
    const { credential, sent } = await budgeted(c, network, true);
    const state = fleet.net(network);
    const lastEventId = c.req.headers['last-event-id'];
    // An agent removed and admitted again must not resume from a point of its former membership.
    const member = credential.key.startsWith('agent:') ? state.members.get(credential.key.slice('agent:'.length)) : undefined;
    const scope = member ? `${credential.key}@${member.joinedAt}` : credential.key;
    const digest = c.req.headers[VIEW_DIGEST_HEADER];
    const result = hub.subscribe(network, credential.key, c.res, () => state.agents.values(), () => state.policyJson, credential.expiresAt,
      typeof lastEventId === 'string' ? lastEventId : undefined, scope, { digest: typeof digest === 'string' ? digest : undefined, agent: (id) => state.agents.get(id) });
    if (!result.ok) refuse(result.code, result.message);
    // A resume from an old point catches up on every agent changed since: paid for like a page.
    sent(result.from === 'point' ? { agents: Math.min(result.changes, state.agents.size) } : { snapshot: true });
  };

  const policy = async (c: RouteCall) => {
    const network = await authorized(c);
    sendText(c.res, 200, `{"ok":true,"policy":${fleet.net(network).policyJson}}`);
  };

  const stats = async (c: RouteCall) => {
    await authorized(c);
    sendJson(c.res, 200, { ok: true, ...ctx.stats() });
  };

  return [
    { method: 'GET', path: '/healthz', handle: ({ res }) => sendJson(res, 200, { ok: true }) },
    { method: 'POST', path: '/v1/sessions', query: NETWORK_QUERY, handle: openSession },
    { method: 'GET', path: '/v1/agents', query: LIST_QUERY, handle: listAgents },
    { method: 'GET', path: '/v1/agents/:id', params: NAME_OR_ID_PARAMS, query: NETWORK_QUERY, handle: getAgent },
    { method: 'GET', path: '/v1/events', query: NETWORK_QUERY, handle: events },
    { method: 'GET', path: '/v1/policy', query: NETWORK_QUERY, handle: policy },
    { method: 'GET', path: '/v1/stats', query: NETWORK_QUERY, handle: stats },
  ];
}
