import type { IncomingMessage, ServerResponse } from 'node:http';
import { adminRoutes } from './admin-routes.js';
import { agentRoutes } from './agent-routes.js';
import { consoleRoutes } from './console/routes.js';
import { readRoutes } from './read-routes.js';
import type { RouteContext } from './route-context.js';
import { routeTable, type Route, type RouteSection } from './route-table.js';

export type { RouteContext } from './route-context.js';

/** Every endpoint of the registry (protocol.ts has the table), with its method, path pattern and request schemas (request-schemas.ts). */
export function registryRoutes(ctx: RouteContext): { routes: Route[]; sections: RouteSection[] } {
  const webConsole = consoleRoutes(ctx);
  const routes = [...readRoutes(ctx), ...agentRoutes(ctx), ...adminRoutes(ctx.admin, ctx.defaultNetwork), ...ctx.audit.routes, ...webConsole.routes];
  return { routes, sections: [webConsole.section] };
}

/** The registry's request handler: its routes as one table (route-table.ts). Refusals are thrown (server.ts answers and counts them). */
export function createRoutes(ctx: RouteContext): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const { routes, sections } = registryRoutes(ctx);
  return routeTable(routes, sections);
}
