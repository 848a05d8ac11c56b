/**
 * The route template of a registry request, for the `route` label: one of ROUTES, never the raw
 * path, so a client cannot create label values (IDs, names and junk paths all land on a template
 * or on "other"). Mirrors the dispatch in src/registry/routes.ts; a path it does not know is "other".
 *
 * | template                            | requests                                     |
 * | ----------------------------------- | -------------------------------------------- |
 * | /healthz                            | liveness probe                               |
 * | /v1/join                            | join with a token                            |
 * | /v1/agents, /v1/agents/:id          | list, get, publish (PUT), leave (DELETE)     |
 * | /v1/agents/:id/heartbeat            | heartbeat                                    |
 * | /v1/agents/:id/paths                | the paths an agent reports (for the console) |
 * | /v1/events, /v1/policy, /v1/stats   | event stream, policy, stats                  |
 * | /v1/admin/agents[/:id[/block]]      | admin API: agents                            |
 * | /v1/admin/policy                    | admin API: policy                            |
 * | /v1/audit/witness|ship|head|entries | the audit witness                            |
 * | /console                            | the web console and everything under it      |
 * | other                               | anything else (answered 404)                 |
 */
export const ROUTES = [
  '/healthz', '/v1/join', '/v1/agents', '/v1/agents/:id', '/v1/agents/:id/heartbeat', '/v1/agents/:id/paths', '/v1/events', '/v1/policy', '/v1/stats',
  '/v1/admin/agents', '/v1/admin/agents/:id', '/v1/admin/agents/:id/block', '/v1/admin/policy',
  '/v1/audit/witness', '/v1/audit/ship', '/v1/audit/head', '/v1/audit/entries', '/console', 'other',
] as const;

export type RouteTemplate = (typeof ROUTES)[number];

const FIXED = new Map<string, RouteTemplate>([
  ['healthz', '/healthz'], ['v1/join', '/v1/join'], ['v1/agents', '/v1/agents'], ['v1/events', '/v1/events'], ['v1/policy', '/v1/policy'],
  ['v1/stats', '/v1/stats'], ['v1/admin/agents', '/v1/admin/agents'], ['v1/admin/policy', '/v1/admin/policy'],
  ['v1/audit/witness', '/v1/audit/witness'], ['v1/audit/ship', '/v1/audit/ship'], ['v1/audit/head', '/v1/audit/head'], ['v1/audit/entries', '/v1/audit/entries'],
]);

/** The template of a request URL (path and query as sent). */
export function routeTemplate(url: string | undefined): RouteTemplate {
  let parts: string[];
  try {
    // Decoded as routes.ts decodes it, so /v1/%61gents counts where it is served.
    parts = (url ?? '').split(/[?#]/, 1)[0].split('/').slice(1).map(decodeURIComponent);
  } catch {
    return 'other';
  }
  const fixed = FIXED.get(parts.join('/'));
  if (fixed) return fixed;
  if (parts[0] === 'console') return '/console';
  if (parts[0] !== 'v1' || !parts[2]) return 'other';
  if (parts[1] === 'agents') {
    if (parts.length === 3) return '/v1/agents/:id';
    if (parts.length === 4 && parts[3] === 'heartbeat') return '/v1/agents/:id/heartbeat';
    if (parts.length === 4 && parts[3] === 'paths') return '/v1/agents/:id/paths';
  }
  if (parts[1] === 'admin' && parts[2] === 'agents' && parts[3]) {
    if (parts.length === 4) return '/v1/admin/agents/:id';
    if (parts.length === 5 && parts[4] === 'block') return '/v1/admin/agents/:id/block';
  }
  return 'other';
}

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE']);

/** The `method` label: the methods the registry serves, else "other". */
export function methodLabel(method: string | undefined): string {
  return method !== undefined && METHODS.has(method) ? method : 'other';
}

/** The `status` label: a status code our own code set (100–599), else "other". */
export function statusLabel(code: number): string {
  return Number.isInteger(code) && code >= 100 && code <= 599 ? String(code) : 'other';
}
