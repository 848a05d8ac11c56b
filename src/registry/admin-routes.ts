import type { IncomingMessage, ServerResponse } from 'node:http';
import { readBody, sendJson } from './http-body.js';
import { getPolicy, listAgents, removeAgent, setPolicy } from './operator.js';
import type { OperatorSync } from './operator-sync.js';
import { refuse } from './refusals.js';
import type { RegistryStore } from './store.js';

/**
 * The admin API (every request: `Authorization: Bearer <admin token>`, checked before anything
 * else is read; `?network=NAME`, the registry's default without it):
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

/** Handles /v1/admin/...: `parts` is the path after "v1/admin". */
export async function adminRoute(ctx: AdminContext, req: IncomingMessage, res: ServerResponse, parts: string[], network: string): Promise<void> {
  await ctx.authorize(req);
  const method = req.method ?? '';
  const allow = (m: string) => {
    if (method !== m) refuse('METHOD_NOT_ALLOWED', `${method} is not allowed here`);
  };
  if (parts.length === 1 && parts[0] === 'agents') {
    allow('GET');
    return sendJson(res, 200, { ok: true, ...(await listAgents(ctx.store, network)) });
  }
  if (parts[0] === 'agents' && parts[1] && (parts.length === 2 || (parts.length === 3 && parts[2] === 'block'))) {
    const block = parts.length === 3;
    allow(block ? 'POST' : 'DELETE');
    const r = await removeAgent(ctx.store, network, parts[1], block);
    await ctx.sync.poll();
    return sendJson(res, 200, { ok: true, network, id: r.id, name: r.name, blocked: block });
  }
  if (parts.length === 1 && parts[0] === 'policy') {
    if (method === 'GET') {
      const p = await getPolicy(ctx.store, network);
      return sendJson(res, 200, { ok: true, policy: p && { version: p.version, policy: p.text, setAt: p.setAt } });
    }
    allow('PUT');
    const text = (await readBody(req)).toString('utf8');
    const p = await setPolicy(ctx.store, network, text);
    await ctx.sync.poll();
    return sendJson(res, 200, { ok: true, network, version: p.version });
  }
  refuse('NOT_FOUND', 'no such admin endpoint');
}
