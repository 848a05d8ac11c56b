import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import pino from 'pino';
import { Identity } from '../../src/identity/identity.js';
import { overlayIPv6 } from '../../src/identity/addresses.js';
import { formatAddress, parsePrefix } from '../../src/ip/prefix.js';
import { EventHub } from '../../src/registry/events.js';
import { Entry, Fleet } from '../../src/registry/fleet-state.js';
import { signRecord } from '../../src/registry/record.js';
import { createAuditRoutes } from '../../src/registry/audit-routes.js';
import { ephemeralWitnessKey } from '../../src/registry/witness-key.js';
import { createRoutes, registryRoutes, type RouteContext } from '../../src/registry/routes.js';
import { SignatureBudget } from '../../src/registry/signature-budget.js';
import type { RegistryStore } from '../../src/registry/store.js';

/**
 * The registry's request handler in process, with no store behind it (a join token is always
 * valid): what one request costs to dispatch, validate and answer, without HTTP and sockets.
 */

const NET = 'default';

/** A request as the handler sees it: headers, method, URL, and a body emitted on the next tick. */
function fakeRequest(method: string, url: string, headers: Record<string, string>, body?: Buffer): IncomingMessage {
  const req = new EventEmitter() as IncomingMessage & EventEmitter;
  Object.assign(req, { method, url, headers: { ...headers, ...(body ? { 'content-length': String(body.length) } : {}) }, socket: { remoteAddress: '127.0.0.1' }, complete: false });
  queueMicrotask(() => {
    if (body) req.emit('data', body);
    (req as { complete: boolean }).complete = true;
    req.emit('end');
  });
  return req;
}

class FakeResponse {
  status = 0;
  body = '';
  headers: Record<string, string> = {};
  headersSent = false;
  destroyed = false;
  setHeader(k: string, v: string): void {
    this.headers[k.toLowerCase()] = v;
  }
  writeHead(status: number, h: Record<string, string | number>): this {
    this.status = status;
    for (const [k, v] of Object.entries(h)) this.headers[k] = String(v);
    return this;
  }
  end(text?: string): void {
    this.body = text ?? '';
  }
  destroy(): void {
    this.destroyed = true;
  }
}

export interface Bench {
  /** Answers one request: its status and refusal code (or 'ok'). */
  request(method: string, url: string, o?: { headers?: Record<string, string>; body?: unknown }): Promise<{ status: number; code: string; headers: Record<string, string> }>;
  member: Identity;
  /** "METHOD /path" of every route in the table. */
  routes: string[];
}

export function routeBench(): Bench {
  const fleet = new Fleet();
  const member = Identity.generate();
  const now = Date.now();
  const state = fleet.net(NET);
  state.setMember({ id: member.id, network: NET, name: 'planner', ipv4: '100.64.0.1', joinedAt: now, tags: [] });
  const record = {
    v: 1 as const, network: NET, id: member.id, name: 'planner', wgPublicKey: Buffer.from(member.wgPublicKey).toString('base64'), ipv4: '100.64.0.1',
    ipv6: formatAddress(overlayIPv6(NET, member.publicKey)), endpoints: ['192.0.2.1:51820'], capabilities: ['llm.plan'], seq: 1, issuedAt: now, expiresAt: now + 3_600_000,
  };
  state.setAgent(member.id, new Entry({ ...signRecord(member, record), online: true, lastSeen: now }));
  const store = { checkToken: async () => ({ ok: true, expiresAt: null }) } as unknown as RegistryStore;
  const noop = () => {};
  const ctx = {
    store, fleet, hub: new EventHub({ streams: 100, streamsPerCredential: 4 }), signatures: new SignatureBudget(), log: pino({ level: 'silent' }), defaultNetwork: NET,
    pool: parsePrefix('100.64.0.0/10'), heartbeatIntervalMs: 10_000, offlineAfterMs: 30_000, relayInfo: () => ({ relays: [], stun: [] }), emit: noop,
    admin: { store, authorize: async () => {}, sync: { poll: async () => {} } }, events: {}, stats: () => ({}),
  } as unknown as RouteContext;
  // The audit routes as server.ts makes them (its `route` for the dispatch this replaced).
  ctx.audit = createAuditRoutes({ store, fleet, witness: ephemeralWitnessKey(), signatures: ctx.signatures, authorizeAdmin: async () => {}, refusalKept: async () => {}, defaultNetwork: NET, log: ctx.log });
  const handle = createRoutes(ctx);
  return {
    member,
    routes: registryRoutes(ctx).routes.map((r) => `${r.method} ${r.path}`),
    async request(method, url, o = {}) {
      const body = o.body === undefined ? undefined : Buffer.from(typeof o.body === 'string' ? o.body : JSON.stringify(o.body));
      const req = fakeRequest(method, url, o.headers ?? {}, body);
      const res = new FakeResponse();
      try {
        await handle(req, res as unknown as ServerResponse);
        return { status: res.status, code: 'ok', headers: res.headers };
      } catch (e) {
        return { status: 0, code: (e as { code?: string }).code ?? String(e), headers: res.headers };
      }
    },
  };
}

/** µs per request over `n` requests made by `make` (sequential: one request's full cost). */
export async function perRequestMicros(n: number, make: (i: number) => Promise<unknown>): Promise<number> {
  for (let i = 0; i < Math.min(2_000, n); i++) await make(i); // warm up the JIT
  const started = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await make(i);
  return Number(process.hrtime.bigint() - started) / 1_000 / n;
}
