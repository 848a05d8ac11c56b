import { createServer as createHttpServer, type RequestListener, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { ConnectionGuard } from './connection-guard.js';

/** Slow or silent clients may hold a socket this long for their headers (and a TLS handshake), and for their whole request. */
export const HEADERS_TIMEOUT_MS = 10_000;
export const REQUEST_TIMEOUT_MS = 30_000;
/**
 * How often Node looks for connections past those timeouts. Its default (30 s) let a 10 s
 * header timeout fire after up to 30 s; checking every second keeps it within ~1 s.
 */
export const CONNECTIONS_CHECK_INTERVAL_MS = 1_000;

/**
 * An HTTP(S) server for clients on the open network (the registry, a relay's TCP fallback): its
 * timeouts hold, and `guard` caps its connections per address and in total.
 */
export function guardedServer(tls: { cert: Buffer; key: Buffer } | null, keepAliveTimeoutMs: number, guard: ConnectionGuard, handler: RequestListener): Server {
  const options = {
    headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: REQUEST_TIMEOUT_MS, keepAliveTimeout: keepAliveTimeoutMs,
    connectionsCheckingInterval: CONNECTIONS_CHECK_INTERVAL_MS,
  };
  const server: Server = tls ? createHttpsServer({ ...tls, ...options, handshakeTimeout: HEADERS_TIMEOUT_MS }, handler) : createHttpServer(options, handler);
  guard.attach(server);
  return server;
}
