import { extendRange, rangeRoot } from '../audit/compact-range.js';
import { openCheckpoint, parseNote, keyIdOf, MAX_NOTE_BYTES, type Checkpoint, type NoteVerifier } from '../audit/checkpoint.js';
import { MAX_ENTRY_BYTES, parseEntry } from '../audit/entry.js';
import { HASH_SIZE, leafHash, verifyConsistency } from '../audit/merkle.js';
import { agentLogOrigin } from '../audit/origin.js';
import { AgentVpnError } from '../errors.js';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import type { KeyStatement } from '../identity/rotation.js';
import type { Body } from './http-body.js';
import { MAX_SHIP_ENTRIES } from './protocol.js';
import { refuse } from './refusals.js';
import type { AuditEntryRow, AuditHead } from './store.js';

/**
 * The checks on a ship (POST /v1/audit/ship, protocol.ts has the body), cheapest first: the body's
 * shape and sizes; the checkpoint's signature by a key of the agent's chain; then, against what
 * the registry holds, the consistency proof and the entries (each a canonical entry of this agent
 * at its seq) hashed into the held compact range, whose new root must be the checkpoint's.
 */

/** A proof from size m to n holds at most ~2 log2(n) hashes; 64 is what merkle.ts verifies at most. */
export const MAX_PROOF_HASHES = 64;
const HASH_BASE64 = /^[A-Za-z0-9+/]{43}=$/;
const FIELDS = ['agent', 'checkpoint', 'entries', 'from', 'proof'];

/** The keys that may sign the agent's checkpoints: every key of its chain, or the ID's own key. */
export function agentLogVerifiers(agent: string, chain: readonly KeyStatement[] | undefined): NoteVerifier[] {
  const name = agentLogOrigin(agent);
  const keys = chain && chain.length > 0 ? chain.map((s) => Buffer.from(s.key, 'base64')) : [publicKeyOfAgentId(agent)!];
  return keys.map((publicKey) => ({ name, publicKey }));
}

export interface ShipBody {
  agent: string;
  from: number;
  entries: string[];
  checkpoint: string;
  proof: Buffer[];
}

function malformed(message: string): never {
  refuse('AUDIT_MALFORMED', message);
}

/** The body's shape and caps; nothing is hashed or verified yet. */
export function parseShipBody(b: Body, agent: string): ShipBody {
  const keys = Object.keys(b).sort();
  if (keys.join() !== FIELDS.join()) malformed(`a ship has exactly the fields ${FIELDS.join(', ')}`);
  if (b.agent !== agent) malformed('the body\'s agent is not the agent in the query');
  if (!Number.isSafeInteger(b.from) || (b.from as number) < 0) malformed('from is not a non-negative integer');
  const entries = b.entries;
  if (!Array.isArray(entries) || entries.length === 0 || entries.length > MAX_SHIP_ENTRIES) malformed(`entries is not a list of 1 to ${MAX_SHIP_ENTRIES} lines`);
  // Length in UTF-16 units is at most the UTF-8 length: a cheap first cap (parseEntry counts bytes).
  if (!(entries as unknown[]).every((e) => typeof e === 'string' && e.length <= MAX_ENTRY_BYTES)) malformed(`every entry is a line of at most ${MAX_ENTRY_BYTES} bytes`);
  if (typeof b.checkpoint !== 'string' || b.checkpoint.length > MAX_NOTE_BYTES) malformed(`checkpoint is not a note of at most ${MAX_NOTE_BYTES} bytes`);
  const proof = b.proof;
  if (!Array.isArray(proof) || proof.length > MAX_PROOF_HASHES || !proof.every((h) => typeof h === 'string' && HASH_BASE64.test(h))) {
    malformed(`proof is not a list of at most ${MAX_PROOF_HASHES} base64 hashes of ${HASH_SIZE} bytes`);
  }
  return { agent, from: b.from as number, entries: entries as string[], checkpoint: b.checkpoint as string, proof: (proof as string[]).map((h) => Buffer.from(h, 'base64')) };
}

/**
 * Verifies the checkpoint's signature and origin; returns it with the note cut down to the
 * agent's verified signature lines (so the stored, cosigned note carries no one else's line, and
 * no look-alike of the witness's). Throws AUDIT_BAD_SIGNATURE or AUDIT_MALFORMED.
 */
export function openShipCheckpoint(note: string, agent: string, verifiers: readonly NoteVerifier[]): { checkpoint: Checkpoint; note: string } {
  let checkpoint: Checkpoint;
  try {
    checkpoint = openCheckpoint(note, verifiers);
  } catch (e) {
    if (!(e instanceof AgentVpnError)) throw e;
    if (e.code === 'AUDIT_NOTE_UNVERIFIED' || e.code === 'AUDIT_NOTE_BAD_SIGNATURE') refuse('AUDIT_BAD_SIGNATURE', `the checkpoint is not signed by a key of agent ${agent}'s chain: ${e.message}`);
    malformed(`the checkpoint: ${e.message}`);
  }
  if (checkpoint.origin !== agentLogOrigin(agent)) malformed(`the checkpoint's origin is not ${agentLogOrigin(agent)}`);
  const parsed = parseNote(note);
  const lines = parsed.signatures
    .filter((s) => verifiers.some((v) => v.name === s.name && keyIdOf(v.name, v.publicKey).equals(s.keyId)))
    .map((s) => `\u2014 ${s.name} ${Buffer.concat([s.keyId, s.signature]).toString('base64')}\n`);
  return { checkpoint, note: `${parsed.text}\n${lines.join('')}` };
}

export type ShipCheck =
  | { ok: true; entries: AuditEntryRow[]; frontier: Buffer[] }
  | { ok: false; reason: string };

/**
 * Whether the ship extends the held log: the checkpoint is consistent with the held tree head,
 * and the entries, appended to the held compact range, give the checkpoint's root. Malformed
 * entries (not canonical, another agent's, out of place) are refused (AUDIT_MALFORMED); an
 * inconsistency is returned, for the caller to refuse and keep as evidence.
 */
export function checkShip(ship: ShipBody, checkpoint: Checkpoint, held: AuditHead): ShipCheck {
  if (checkpoint.size !== ship.from + ship.entries.length) malformed(`the checkpoint's size ${checkpoint.size} is not from + entries (${ship.from + ship.entries.length})`);
  if (!verifyConsistency(held.size, checkpoint.size, ship.proof, rangeRoot(held.frontier), checkpoint.rootHash)) {
    return { ok: false, reason: `the checkpoint of size ${checkpoint.size} is not consistent with the tree of size ${held.size} the registry holds (the proof fails)` };
  }
  const entries = ship.entries.map((line, i): AuditEntryRow => {
    const seq = ship.from + i;
    let entry;
    try {
      entry = parseEntry(line);
    } catch (e) {
      malformed(`entry ${seq}: ${(e as Error).message}`);
    }
    if (entry.agent !== ship.agent) malformed(`entry ${seq} belongs to ${entry.agent.slice(0, 80)}, not to the shipping agent`);
    if (entry.seq !== seq) malformed(`the entry at seq ${seq} says seq ${entry.seq}`);
    return { seq, line, leafHash: leafHash(Buffer.from(line, 'utf8')) };
  });
  const frontier = extendRange(held.frontier, held.size, entries.map((e) => e.leafHash));
  if (!rangeRoot(frontier).equals(checkpoint.rootHash)) {
    return { ok: false, reason: `the entries ${ship.from}..${checkpoint.size - 1} do not hash to the checkpoint's root` };
  }
  return { ok: true, entries, frontier };
}
