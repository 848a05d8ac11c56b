import type { SchemaObject } from 'ajv';
import { MAX_NOTE_BYTES } from '../audit/checkpoint.js';
import { MAX_ENTRY_BYTES } from '../audit/entry.js';
import { AGENT_ID_PATTERN } from '../identity/agent-id.js';
import { NAME_PATTERN, NETWORK_PATTERN } from '../net/names.js';
import { MAX_PROOF_HASHES } from './audit-ship.js';
import { MAX_REPORTED_PATHS } from './path-report.js';
import { MAX_SHIP_ENTRIES } from './protocol.js';

/**
 * JSON schemas of the registry's requests (route-table.ts validates each one before its handler
 * sees it; the routes name theirs). They bound shape and size: types, patterns, lengths, integer
 * ranges, required fields, and `additionalProperties: false` where a handler refuses unknown
 * fields (publish, audit ship). What a field means is still checked by its handler: a record by
 * verifyRecord, a key chain by screenChain, a ship by audit-ship.ts, a path report by
 * parseReportedPaths, signatures by their verifiers. Query values are strings (a repeated name is
 * an array, refused by its string schema), and a query's unknown names are ignored, as before.
 */

const network = { type: 'string', pattern: NETWORK_PATTERN.source };
const agentId = { type: 'string', pattern: AGENT_ID_PATTERN.source };
/** An agent ID matches it too (54 lowercase letters and digits). */
const nameOrId = { type: 'string', pattern: NAME_PATTERN.source };
const wholeNumber = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER };
/** Milliseconds, signed by the agent (its range against our clock is the handler's check). */
const timestamp = wholeNumber;
/** verifyAgentSignature reads no longer signature (a base64 Ed25519 one is 88 characters). */
const signature = { type: 'string', maxLength: 200 };
/** A query integer as text: digits only, at most `n` of them (the handler checks its range). */
const digits = (n: number) => ({ type: 'string', pattern: `^[0-9]{1,${n}}$` });

const params = (id: object): SchemaObject => ({ type: 'object', properties: { id }, required: ['id'] });
const query = (properties: Record<string, object>, required: string[] = []): SchemaObject => ({ type: 'object', properties: { network, ...properties }, required });

/** :id of /v1/agents/:id (PUT, DELETE), its heartbeat and paths: an agent ID. */
export const AGENT_ID_PARAMS = params(agentId);
/** :id of GET /v1/agents/:id and the admin's agents/:id: a name or an agent ID. */
export const NAME_OR_ID_PARAMS = params(nameOrId);

/** ?network= (the registry's default without it). */
export const NETWORK_QUERY = query({});

/** GET /v1/agents (list-page.ts has limit and cursor; net/capabilities.ts reads no cap over 512 characters). */
export const LIST_QUERY = query({
  cap: { type: 'string', maxLength: 512 }, name: nameOrId, online: { enum: ['1', '0', 'true', 'false'] }, limit: digits(7), cursor: agentId,
});

/** The console passes its network selector as is: empty is the default network. */
export const CONSOLE_QUERY: SchemaObject = { type: 'object', properties: { network: { type: 'string', pattern: `^$|${NETWORK_PATTERN.source}` } } };

/** POST /v1/audit/ship?agent=ID: the agent is known before the body is read. */
export const AUDIT_SHIP_QUERY = query({ agent: agentId }, ['agent']);
/** GET /v1/audit/head and /v1/audit/entries. */
export const AUDIT_READ_QUERY = query({ agent: agentId, from: digits(16), limit: digits(16) }, ['agent']);

/** POST /v1/join (protocol.ts JoinRequest); other fields are ignored, as they always were. */
export const JOIN_BODY: SchemaObject = {
  type: 'object',
  properties: { network, id: agentId, name: nameOrId, timestamp, token: { type: 'string', maxLength: 256 }, signature },
  required: ['network', 'id', 'name', 'timestamp', 'signature'],
};

/** POST /v1/agents/:id/heartbeat and DELETE /v1/agents/:id (protocol.ts SignedTimestamp). */
export const SIGNED_TIMESTAMP_BODY: SchemaObject = { type: 'object', properties: { timestamp, signature }, required: ['timestamp', 'signature'] };

/** PUT /v1/agents/:id: a SignedRecord, its chain beside it; nothing else (unsigned fields are never stored). */
export const PUBLISH_BODY: SchemaObject = {
  type: 'object',
  properties: { record: { type: 'object' }, signature, chain: { type: 'array' } },
  required: ['record', 'signature'],
  additionalProperties: false,
};

/** PUT /v1/agents/:id/paths (path-report.ts). */
export const PATH_REPORT_BODY: SchemaObject = {
  type: 'object',
  properties: {
    timestamp,
    signature,
    paths: {
      type: 'array',
      maxItems: MAX_REPORTED_PATHS,
      items: {
        type: 'object',
        properties: { peer: agentId, kind: { enum: ['direct', 'relay'] }, endpoint: { type: 'string', maxLength: 80 }, rttMs: { type: ['number', 'null'] } },
        required: ['peer', 'kind', 'endpoint', 'rttMs'],
      },
    },
  },
  required: ['timestamp', 'paths', 'signature'],
};

/** POST /v1/audit/ship (protocol.ts AuditShip): exactly its fields. */
export const AUDIT_SHIP_BODY: SchemaObject = {
  type: 'object',
  properties: {
    agent: agentId,
    from: wholeNumber,
    entries: { type: 'array', minItems: 1, maxItems: MAX_SHIP_ENTRIES, items: { type: 'string', maxLength: MAX_ENTRY_BYTES } },
    checkpoint: { type: 'string', maxLength: MAX_NOTE_BYTES },
    proof: { type: 'array', maxItems: MAX_PROOF_HASHES, items: { type: 'string', maxLength: 44 } },
  },
  required: ['agent', 'from', 'entries', 'checkpoint', 'proof'],
  additionalProperties: false,
};
