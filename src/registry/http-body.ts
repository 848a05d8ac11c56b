import type { IncomingMessage, ServerResponse } from 'node:http';
import { AgentVpnError } from '../errors.js';
import { MAX_BODY_BYTES, MAX_JSON_DEPTH } from './protocol.js';
import { REFUSALS, refuse } from './refusals.js';

/** A JSON object body, as read. */
export type Body = Record<string, unknown>;

/**
 * Reads a body of at most `maxBytes` (MAX_BODY_BYTES unless a route takes more). Past the limit
 * it refuses at once and discards the rest (not destroying the request, so the 413 answer still
 * reaches the client).
 */
export function readBody(req: IncomingMessage, maxBytes = MAX_BODY_BYTES): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (declared > maxBytes) refuse('PAYLOAD_TOO_LARGE', `request body of ${declared} bytes is over the ${maxBytes}-byte limit`);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    req.on('data', (chunk: Buffer) => {
      if (total > maxBytes) return;
      total += chunk.length;
      if (total > maxBytes) reject(new AgentVpnError('PAYLOAD_TOO_LARGE', `request body is over the ${maxBytes}-byte limit`, REFUSALS.PAYLOAD_TOO_LARGE.hint));
      else chunks.push(chunk);
    });
    // A small body comes in one chunk: read as is, not copied.
    req.on('end', () => resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)));
    const cutOff = () => reject(new AgentVpnError('BAD_REQUEST', 'the request body was cut off', REFUSALS.BAD_REQUEST.hint));
    req.on('error', cutOff);
    req.on('close', () => !req.complete && cutOff());
  });
}

/** Reads a JSON object body; nesting is checked on the raw bytes before anything parses or walks it. */
export async function readJson(req: IncomingMessage, maxBytes = MAX_BODY_BYTES): Promise<Body> {
  const raw = await readBody(req, maxBytes);
  if (jsonDepth(raw, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) refuse('BAD_REQUEST', `request body is JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch {
    refuse('BAD_REQUEST', 'request body is not valid JSON');
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) refuse('BAD_REQUEST', 'request body must be a JSON object');
  return body as Body;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACKET = 0x5b;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACKET = 0x5d;
const CLOSE_BRACE = 0x7d;

/**
 * How deep arrays and objects nest in JSON text, counted on the bytes (brackets inside strings
 * do not count); stops as soon as it passes `stopAbove`. Invalid JSON is JSON.parse's to refuse.
 */
export function jsonDepth(raw: Uint8Array, stopAbove: number): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    if (inString) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) inString = false;
    } else if (c === QUOTE) {
      inString = true;
    } else if (c === OPEN_BRACKET || c === OPEN_BRACE) {
      if (++depth > deepest && (deepest = depth) > stopAbove) return deepest;
    } else if (c === CLOSE_BRACKET || c === CLOSE_BRACE) {
      depth--;
    }
  }
  return deepest;
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  sendText(res, status, JSON.stringify(body));
}

/** Sends JSON text as is (lists are assembled from each agent's cached JSON). */
export function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}
