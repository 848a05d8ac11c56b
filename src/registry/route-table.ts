import type { IncomingMessage, ServerResponse } from 'node:http';
import { Ajv, type ErrorObject, type SchemaObject, type ValidateFunction } from 'ajv';
import FindMyWay from 'find-my-way';
import { readJson, type Body } from './http-body.js';
import { refuse } from './refusals.js';

/**
 * The registry's dispatch: one table of routes (method, path pattern, JSON schemas for the path
 * parameters, the query and the body, a handler), looked up in a radix tree (find-my-way) and
 * validated by schemas compiled once (ajv). Every request passes, in this order and before its
 * handler runs: URL parse; lookup (unknown path 404 NOT_FOUND; known path, other method 405
 * METHOD_NOT_ALLOWED with an `allow` header); the path parameters' schema; the query's schema.
 * The body is read when the handler asks for it (some read it only after cheap membership and
 * budget checks, so a stranger's body is never parsed), and validated as soon as it is parsed,
 * before the handler sees it: size cap (http-body.ts), nesting on the raw bytes, JSON.parse,
 * schema. A failed schema is a refusal naming the field (`invalid body: /timestamp must be integer`).
 */

export type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
const METHODS: readonly Method[] = ['GET', 'POST', 'PUT', 'DELETE'];

/** Longer than any ID or name (63), so a long one reaches its schema and gets a clear refusal; longer still is 404. */
const MAX_PARAM_CHARS = 256;
/** Refusal messages carry the field's path, which the client chose: kept short. */
const MAX_MESSAGE_CHARS = 200;

/** Query values as sent: one string per name, an array when a name repeats (which a string schema refuses). */
export type Query = Record<string, string | undefined>;

export interface RouteCall {
  req: IncomingMessage;
  res: ServerResponse;
  /** The path's parameters, decoded and valid against the route's `params` schema. */
  params: Record<string, string>;
  /** The query, valid against the route's `query` schema (read only the names it declares). */
  query: Query;
  url: URL;
  now: number;
  /** Reads the JSON body (route's byte cap), refusing it unless it is valid against the route's `body` schema. */
  body<T = Body>(): Promise<T>;
}

export interface Route {
  method: Method;
  /** find-my-way pattern: `/v1/agents/:id/heartbeat`. */
  path: string;
  params?: SchemaObject;
  query?: SchemaObject;
  body?: SchemaObject;
  /** The body's byte cap, when not MAX_BODY_BYTES. */
  maxBodyBytes?: number;
  /** The refusal for a body that fails its schema: BAD_REQUEST, unless the route documents its own (publish, audit ship). */
  invalidBody?: string;
  /** Headers set before the handler runs, so refusals carry them too (the console's CSP). */
  headers?: Readonly<Record<string, string>>;
  handle(call: RouteCall): Promise<void> | void;
}

/** Headers for every answer under a prefix, a 404 or 405 there included. */
export interface RouteSection {
  prefix: string;
  headers: Readonly<Record<string, string>>;
}

const ajv = new Ajv({ allErrors: false, removeAdditional: false, coerceTypes: false, useDefaults: false, strict: true });

/** Compiled once per schema object (ajv caches by identity), so starting many registries compiles once. */
function compile(schema: SchemaObject | undefined): ValidateFunction | null {
  return schema ? ajv.compile(schema) : null;
}

function describe(where: string, e: ErrorObject): string {
  const at = e.instancePath;
  const text = e.keyword === 'additionalProperties' ? `${at ? `${at} has an` : 'an'} unknown field "${String(e.params.additionalProperty)}"`
    : e.keyword === 'required' ? `${at}/${String(e.params.missingProperty)} is missing`
      : `${at || `the ${where}`} ${e.message ?? 'is invalid'}`;
  return `invalid ${where}: ${text}`.slice(0, MAX_MESSAGE_CHARS);
}

function check(validate: ValidateFunction | null, value: unknown, where: string, code: string): void {
  if (validate && !validate(value)) refuse(code, describe(where, validate.errors![0]));
}

/** The query as an object without a prototype (a `__proto__` name is a plain field); repeated names become arrays. */
function queryOf(url: URL): Record<string, string | string[]> {
  const q: Record<string, string | string[]> = Object.create(null);
  for (const [k, v] of url.searchParams) {
    const had = q[k];
    q[k] = had === undefined ? v : Array.isArray(had) ? [...had, v] : [had, v];
  }
  return q;
}

interface Compiled {
  route: Route;
  params: ValidateFunction | null;
  query: ValidateFunction | null;
  body: ValidateFunction | null;
}

/** The request handler for `routes`; refusals are thrown (server.ts answers and counts them). */
export function routeTable(routes: readonly Route[], sections: readonly RouteSection[] = []): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const router = FindMyWay({
    caseSensitive: true, ignoreTrailingSlash: false, ignoreDuplicateSlashes: false, maxParamLength: MAX_PARAM_CHARS,
    // We route the pathname alone; a bad percent-encoding matches the `null` store below.
    querystringParser: () => ({}), onBadUrl: () => {},
  });
  for (const route of routes) {
    const compiled: Compiled = { route, params: compile(route.params), query: compile(route.query), body: compile(route.body) };
    router.on(route.method, route.path, () => {}, compiled);
  }

  return async (req, res) => {
    const now = Date.now();
    const target = req.url ?? '';
    // A path, as clients send it: "//host/x" is not read as another host's "/x", and absolute forms are for proxies.
    if (!target.startsWith('/')) refuse('BAD_REQUEST', 'the request target must be a path');
    let url: URL;
    try {
      url = new URL(`http://registry${target}`);
    } catch {
      refuse('BAD_REQUEST', 'invalid request URL');
    }
    const method = req.method ?? '';
    const path = url.pathname;
    for (const s of sections) if (path === s.prefix || path.startsWith(`${s.prefix}/`)) for (const [k, v] of Object.entries(s.headers)) res.setHeader(k, v);
    const found = router.find(method as Method, path);
    if (found && found.store === null) refuse('BAD_REQUEST', 'invalid percent-encoding in the path');
    if (!found) {
      const allowed = METHODS.filter((m) => m !== method && router.find(m, path)?.store);
      if (allowed.length === 0) refuse('NOT_FOUND', `no such endpoint: ${path.slice(0, 100)}`);
      res.setHeader('allow', allowed.join(', '));
      refuse('METHOD_NOT_ALLOWED', `${method.slice(0, 20)} is not allowed on ${path.slice(0, 100)} (only ${allowed.join(', ')})`);
    }
    const c = found.store as Compiled;
    if (c.route.headers) for (const [k, v] of Object.entries(c.route.headers)) res.setHeader(k, v);
    const params = found.params as Record<string, string>;
    check(c.params, params, 'path', 'BAD_REQUEST');
    const query = c.query ? queryOf(url) : {};
    check(c.query, query, 'query', 'BAD_REQUEST');
    const body = async <T>(): Promise<T> => {
      const b = await readJson(req, c.route.maxBodyBytes);
      check(c.body, b, 'body', c.route.invalidBody ?? 'BAD_REQUEST');
      return b as T;
    };
    await c.route.handle({ req, res, params, query: query as Query, url, now, body });
  };
}
