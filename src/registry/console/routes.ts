import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { EventHub } from '../events.js';
import { sendText } from '../http-body.js';
import { MAX_REPORT_BYTES } from '../path-report.js';
import { refuse } from '../refusals.js';
import { AGENT_ID_PARAMS, CONSOLE_QUERY, NETWORK_QUERY, PATH_REPORT_BODY } from '../request-schemas.js';
import type { Route, RouteCall, RouteSection } from '../route-table.js';
import { CONSOLE_CSP, CONSOLE_HTML } from './page.js';
import { PathReports, type PathReportContext } from './path-reports.js';
import { ConsoleSessions, SESSION_LIFETIME_MS, sessionCookie, type Session } from './sessions.js';
import { ConsoleState, type ConsoleStateContext } from './state.js';

/**
 * The web console on the registry (docs/console.md):
 *
 * | request                         | needs                                   | answer                               |
 * | ------------------------------- | --------------------------------------- | ------------------------------------ |
 * | GET /console                    | nothing                                 | the page (static, CSP by hash)       |
 * | POST /console/api/login         | same-site header; Bearer <admin token>  | {ok, expiresAt} + session cookie     |
 * | POST /console/api/logout        | same-site header                        | {ok} + the cookie cleared            |
 * | GET /console/api/session        | session                                 | {ok, expiresAt}                      |
 * | GET /console/api/state?network= | session                                 | {ok, ...state.ts's fields}           |
 * | GET /console/api/events?network=| session                                 | the registry's event stream (events.ts) |
 *
 * "Same-site header": X-AgentVPN-Console: 1, which a cross-site page cannot send without a CORS
 * preflight that the registry never grants, and no Sec-Fetch-Site or Origin naming another site.
 * Login goes through the admin API's check (admin-auth.ts): wrong tokens are budgeted per
 * address and in total before anything is hashed, and recorded in the registry's audit log.
 * Every answer carries the CSP, X-Frame-Options DENY, nosniff, no-referrer and no-store.
 */

export interface ConsoleContext extends PathReportContext, ConsoleStateContext {
  hub: EventHub;
  admin: { authorize(req: IncomingMessage): Promise<void> };
}

export const CONSOLE_HEADER = 'x-agentvpn-console';

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CONSOLE_CSP,
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

/** JSON with "<" escaped: even a response read as HTML by mistake holds no tag. */
function sendConsoleJson(res: ServerResponse, body: unknown): void {
  sendText(res, 200, JSON.stringify(body).replace(/</g, '\\u003c'));
}

/** Refuses a state-changing request that a page of another site could have made. */
function checkSameSite(req: IncomingMessage): void {
  if (req.headers[CONSOLE_HEADER] !== '1') refuse('CROSS_SITE', `the console needs the ${CONSOLE_HEADER} header on this request`);
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin') refuse('CROSS_SITE', `a ${String(site).slice(0, 20)} request was refused`);
  const origin = req.headers.origin;
  if (origin !== undefined && origin.replace(/^https?:\/\//, '') !== req.headers.host) refuse('CROSS_SITE', 'the request comes from another origin');
}

/** The console's routes, and PUT /v1/agents/:id/paths (the reports it shows). */
export function consoleRoutes(ctx: ConsoleContext): { routes: Route[]; section: RouteSection } {
  const sessions = new ConsoleSessions();
  const paths = new PathReports(ctx);
  const state = new ConsoleState(ctx, paths);

  const sessionOf = (req: IncomingMessage, now: number): Session => {
    const s = sessions.of(req, now);
    if (!s) refuse('CONSOLE_LOGIN', 'log in to the console first (no session, or it ended)');
    return s;
  };

  /** The schema let through a network name or nothing (the default). */
  const networkOf = (c: RouteCall): string => {
    const network = c.query.network || ctx.defaultNetwork;
    if (network !== ctx.defaultNetwork && !ctx.fleet.networks.has(network)) refuse('NOT_FOUND', `the registry knows no network ${network}`);
    return network;
  };

  const secure = (req: IncomingMessage) => (req.socket as TLSSocket).encrypted === true;

  const page = ({ res }: RouteCall) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(CONSOLE_HTML) });
    res.end(CONSOLE_HTML);
  };

  const login = async ({ req, res, now }: RouteCall) => {
    checkSameSite(req);
    await ctx.admin.authorize(req);
    const { id, session } = sessions.create(now);
    res.setHeader('set-cookie', sessionCookie(id, SESSION_LIFETIME_MS / 1000, secure(req)));
    sendConsoleJson(res, { ok: true, expiresAt: session.expiresAt });
  };

  const logout = ({ req, res, now }: RouteCall) => {
    checkSameSite(req);
    const s = sessions.end(req, now);
    if (s) ctx.hub.closeCredential(`console:${s.key}`);
    res.setHeader('set-cookie', sessionCookie('', 0, secure(req)));
    sendConsoleJson(res, { ok: true });
  };

  const session = ({ req, res, now }: RouteCall) => sendConsoleJson(res, { ok: true, expiresAt: sessionOf(req, now).expiresAt });

  const fleetState = async (c: RouteCall) => {
    sessionOf(c.req, c.now);
    sendConsoleJson(c.res, { ok: true, ...(await state.build(networkOf(c), c.now)) });
  };

  const events = (c: RouteCall) => {
    const s = sessionOf(c.req, c.now);
    const network = networkOf(c);
    const net = ctx.fleet.net(network);
    const result = ctx.hub.subscribe(network, `console:${s.key}`, c.res, () => net.agents.values(), () => net.policyJson, s.expiresAt);
    if (!result.ok) refuse(result.code, result.message);
  };

  const reportPaths = (c: RouteCall) => paths.route(c, c.query.network ?? ctx.defaultNetwork);

  const headers = SECURITY_HEADERS;
  const routes: Route[] = [
    { method: 'GET', path: '/console', headers, handle: page },
    { method: 'GET', path: '/console/', headers, handle: page },
    { method: 'POST', path: '/console/api/login', headers, handle: login },
    { method: 'POST', path: '/console/api/logout', headers, handle: logout },
    { method: 'GET', path: '/console/api/session', headers, handle: session },
    { method: 'GET', path: '/console/api/state', headers, query: CONSOLE_QUERY, handle: fleetState },
    { method: 'GET', path: '/console/api/events', headers, query: CONSOLE_QUERY, handle: events },
    { method: 'PUT', path: '/v1/agents/:id/paths', params: AGENT_ID_PARAMS, query: NETWORK_QUERY, body: PATH_REPORT_BODY, maxBodyBytes: MAX_REPORT_BYTES, handle: reportPaths },
  ];
  return { routes, section: { prefix: '/console', headers } };
}
