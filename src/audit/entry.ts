import { AgentVpnError } from '../errors.js';

/**
 * An audit entry: one security-relevant event, as canonical JSON (the Merkle leaf's bytes).
 *
 * | field   | type    | meaning                                                             |
 * | ------- | ------- | ------------------------------------------------------------------- |
 * | seq     | integer | position in the log, from 0, no gaps                                |
 * | time    | string  | when it happened: ISO 8601 UTC with milliseconds                    |
 * | agent   | string  | the log's owner: an agent ID, or the registry's log name            |
 * | type    | string  | what happened: dotted lowercase words, e.g. "trust.pinned"          |
 * | subject | string  | whom or what it is about (a peer's ID, a network, ""), ≤ 256 bytes  |
 * | details | object  | event-specific facts                                                |
 *
 * Canonical JSON (the RFC 8785 subset we need): object keys sorted by UTF-16 code units, no
 * whitespace, strings as JSON.stringify writes them, numbers only as safe integers. So the same
 * entry always has the same bytes, a parser can insist on them, and an entry holds no newline
 * (one entry per line on disk). Floats are refused: an RTT is recorded in microseconds.
 */

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export interface AuditEntry {
  seq: number;
  time: string;
  agent: string;
  type: string;
  subject: string;
  details: { [key: string]: JsonValue };
}

/** An entry is a line of a few hundred bytes; 8 KiB bounds what one event can make us store and ship. */
export const MAX_ENTRY_BYTES = 8192;
const MAX_DEPTH = 8;
const MAX_SUBJECT_BYTES = 256;
const TYPE = /^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)+$/;
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const FIELDS = ['agent', 'details', 'seq', 'subject', 'time', 'type'];
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function malformed(detail: string): AgentVpnError {
  return new AgentVpnError('AUDIT_ENTRY_MALFORMED', `audit entry is malformed: ${detail}`, 'the log was edited or damaged: run agentvpn audit verify to find where');
}

/** Canonical JSON of a value; throws (our bug) on what it cannot write canonically. */
export function canonicalJson(value: unknown, depth = 0): string {
  if (depth > MAX_DEPTH) throw new TypeError(`nested deeper than ${MAX_DEPTH}`);
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new TypeError(`${value} is not a safe integer`);
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v, depth + 1)).join(',')}]`;
  if (typeof value === 'object') {
    const keys = Object.keys(value as object).sort();
    const obj = value as Record<string, unknown>;
    return `{${keys.filter((k) => obj[k] !== undefined).map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k], depth + 1)}`).join(',')}}`;
  }
  throw new TypeError(`a ${typeof value} has no JSON form`);
}

/** The entry's bytes: its canonical JSON in UTF-8 (no trailing newline). Throws INTERNAL on an entry we must not write. */
export function encodeEntry(entry: AuditEntry): Buffer {
  let text: string;
  try {
    checkFields(entry);
    text = canonicalJson(entry);
  } catch (e) {
    throw new AgentVpnError('INTERNAL', `cannot write audit entry ${entry.type}: ${(e as Error).message}`, 'this is a bug in agentvpn: report it', { cause: e });
  }
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length > MAX_ENTRY_BYTES) throw new AgentVpnError('INTERNAL', `audit entry ${entry.type} is ${bytes.length} bytes (at most ${MAX_ENTRY_BYTES})`, 'this is a bug in agentvpn: clip its details');
  return bytes;
}

/** Parses one entry and insists it is in canonical form (so its bytes are the ones that were hashed). */
export function parseEntry(input: string | Uint8Array): AuditEntry {
  // Sizes first: a UTF-16 unit is at least one UTF-8 byte, so a huge input is refused unread.
  if (input.length > MAX_ENTRY_BYTES) throw malformed(`longer than ${MAX_ENTRY_BYTES} bytes`);
  let text: string;
  try {
    // Fatal decoding: a lenient one reads any invalid byte as U+FFFD, so two lines would be one entry.
    text = typeof input === 'string' ? input : UTF8.decode(input);
  } catch {
    throw malformed('not UTF-8');
  }
  if (Buffer.byteLength(text, 'utf8') > MAX_ENTRY_BYTES) throw malformed(`longer than ${MAX_ENTRY_BYTES} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw malformed('not JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw malformed('not a JSON object');
  const keys = Object.keys(value).sort();
  if (keys.join() !== FIELDS.join()) throw malformed(`its fields are ${keys.join(', ').slice(0, 120)}, not ${FIELDS.join(', ')}`);
  const entry = value as AuditEntry;
  try {
    checkFields(entry);
    if (canonicalJson(entry) !== text) throw new TypeError('not in canonical form (key order, spacing or escapes differ)');
  } catch (e) {
    throw malformed((e as Error).message);
  }
  return entry;
}

function checkFields(e: AuditEntry): void {
  if (!Number.isSafeInteger(e.seq) || e.seq < 0) throw new TypeError('seq is not a non-negative integer');
  // The round trip refuses what Date.parse rolls over (2026-02-30 is 2026-03-02): one instant, one text.
  if (typeof e.time !== 'string' || !TIME.test(e.time) || Number.isNaN(Date.parse(e.time)) || new Date(e.time).toISOString() !== e.time) throw new TypeError('time is not an ISO 8601 UTC time with milliseconds');
  if (typeof e.agent !== 'string' || e.agent.length === 0 || e.agent.length > 128) throw new TypeError('agent is not a log name');
  if (typeof e.type !== 'string' || !TYPE.test(e.type) || e.type.length > 64) throw new TypeError(`type "${String(e.type).slice(0, 64)}" is not dotted lowercase words`);
  if (typeof e.subject !== 'string' || Buffer.byteLength(e.subject, 'utf8') > MAX_SUBJECT_BYTES) throw new TypeError(`subject is not a string of at most ${MAX_SUBJECT_BYTES} bytes`);
  if (typeof e.details !== 'object' || e.details === null || Array.isArray(e.details)) throw new TypeError('details is not an object');
}

/** Clips a string from outside (a peer's name, an error message) so one event stays small. */
export function clip(text: string, maxChars = 200): string {
  return text.length <= maxChars ? text : `${text.slice(0, maxChars)}…`;
}
