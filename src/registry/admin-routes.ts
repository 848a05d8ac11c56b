import type { IncomingMessage } from 'node:http';
import { readBody, sendJson } from './http-body.js';
import { getPolicy, listAgents, removeAgent, setPolicy } from './operator.js';
import type { OperatorSync } from './operator-sync.js';
import { NAME_OR_ID_PARAMS, NETWORK_QUERY } from './request-schemas.js';
import type { Route, RouteCall } from './route-table.js';
import type { RegistryStore } from './store.js';

/**
 * The admin API (every request: `Authorization: Bearer <admin token>`, checked before anything
 * but the path and query's schemas; `?network=NAME`, the registry's default without it):
 *
 * | request                               | body / answer                                           |
 * | ------------------------------------- | ------------------------------------------------------- |
 * | GET /v1/admin/agents                  | {ok, network, agents: OperatorAgent[], blocked: [...]}  |
 * | DELETE /v1/admin/agents/NAME-or-ID    | {ok, id, name}: removed (it may re-join with a token)   |
 * | POST /v1/admin/agents/NAME-or-ID/block| {ok, id, name}: removed and its ID blocked              |
 * | GET /v1/admin/policy                  | {ok, policy: {version, policy, setAt} | null}           |
 * | PUT /v1/admin/policy                  | the policy text (JSON with comments) → {ok, version}    |
 *
 * Each change is applied to the running registry before the answer (operator-sync.ts), so the
 * 'removed' or 'policy' event is already on its way when the operator's call returns.
 */

export interface AdminContext {
  store: RegistryStore;
  /** Refuses a request without a valid admin token (AdminTokens.authorize, with the registry's log told of logins and failures). */
  authorize(req: IncomingMessage): Promise<void>;
  sync: OperatorSync;
}

/** The admin routes: each checks the admin token before it reads anything else. */
export function adminRoutes(ctx: AdminContext, defaultNetwork: string): Route[] {
  const networkOf = (c: RouteCall) => c.query.network ?? defaultNetwork;

  const list = async (c: RouteCall) => {
    await ctx.authorize(c.req);
    sendJson(c.res, 200, { ok: true, ...(await listAgents(ctx.store, networkOf(c))) });
  };

  const remove = (block: boolean) => async (c: RouteCall) => {
    await ctx.authorize(c.req);
    const network = networkOf(c);
    const r = await removeAgent(ctx.store, network, c.params.id, block);
    await ctx.sync.poll();
    sendJson(c.res, 200, { ok: true, network, id: r.id, name: r.name, blocked: block });
  };

  const readPolicy = async (c: RouteCall) => {
    await ctx.authorize(c.req);
    const p = await getPolicy(ctx.store, networkOf(c));
    sendJson(c.res, 200, { ok: true, policy: p && { version: p.version, policy: p.text, setAt: p.setAt } });
  };

  /** The body is policy text (JSON with comments), parsed by operator.ts, not a JSON body. */
  const writePolicy = async (c: RouteCall) => {
    await ctx.authorize(c.req);
    const network = networkOf(c);
    const text = (await readBody(c.req)).toString('utf8');
    const p = await setPolicy(ctx.store, network, text);
    await ctx.sync.poll();
    sendJson(c.res, 200, { ok: true, network, version: p.version });
  };

  const admin = { query: NETWORK_QUERY };
  return [
    { method: 'GET', path: '/v1/admin/agents', ...admin, handle: list },
    { method: 'DELETE', path: '/v1/admin/agents/:id', ...admin, params: NAME_OR_ID_PARAMS, handle: remove(false) },
    { method: 'POST', path: '/v1/admin/agents/:id/block', ...admin, params: NAME_OR_ID_PARAMS, handle: remove(true) },
    { method: 'GET', path: '/v1/admin/policy', ...admin, handle: readPolicy },
    { method: 'PUT', path: '/v1/admin/policy', ...admin, handle: writePolicy },
  ];
}
