import { AgentVpnError } from '../errors.js';
import { signWith, verifySignature } from '../identity/ed25519.js';
import { MAX_SIGNATURES, SIG_PREFIX, keyIdOf, parseCheckpoint, parseNote, type Checkpoint, type NoteSigner, type NoteVerifier } from './checkpoint.js';

/**
 * Ed25519 cosignatures (c2sp.org/tlog-cosignature v1): a witness's statement that, at a time,
 * the checkpoint is the largest consistent tree head it has seen for the log. It is a signature
 * line on the checkpoint note:
 *
 * | part      | content                                                                  |
 * | --------- | ------------------------------------------------------------------------ |
 * | key ID    | SHA-256(name \|\| 0x0A \|\| 0x04 \|\| 32-byte public key)[0:4]               |
 * | timestamp | u64 big-endian, POSIX seconds                                            |
 * | signature | Ed25519 over "cosignature/v1\ntime <timestamp>\n" \|\| the note text      |
 */

const COSIGNATURE_TYPE = 0x04;
const HEADER = 'cosignature/v1\n';
const SIG_SIZE = 64;
const TIMESTAMP_SIZE = 8;

export function cosignerKeyIdOf(name: string, publicKey: Uint8Array): Buffer {
  return keyIdOf(name, publicKey, COSIGNATURE_TYPE);
}

function signedMessage(text: string, time: number): Buffer {
  return Buffer.from(`${HEADER}time ${time}\n${text}`, 'utf8');
}

/** Adds the cosigner's signature line to a signed checkpoint note (whose log signature the caller checked). */
export function cosign(note: string, cosigner: NoteSigner, timeSeconds: number): string {
  if (!Number.isSafeInteger(timeSeconds) || timeSeconds < 0) throw new AgentVpnError('INTERNAL', `cosignature time ${timeSeconds} is not a POSIX time`, 'this is a bug in agentvpn: report it');
  const parsed = parseNote(note);
  parseCheckpoint(parsed.text);
  if (parsed.signatures.length >= MAX_SIGNATURES) {
    throw new AgentVpnError('AUDIT_NOTE_MALFORMED', `the note already holds ${MAX_SIGNATURES} signatures: no room for a cosignature`, 'a checkpoint carries one or two signatures: this one was not written by agentvpn');
  }
  const stamp = Buffer.alloc(TIMESTAMP_SIZE);
  stamp.writeBigUInt64BE(BigInt(timeSeconds));
  const sig = signWith(cosigner.key, signedMessage(parsed.text, timeSeconds));
  const line = `${SIG_PREFIX}${cosigner.name} ${Buffer.concat([cosignerKeyIdOf(cosigner.name, cosigner.key.publicKey), stamp, sig]).toString('base64')}\n`;
  // What we write must read back (a cosigner name with a space or "+" would make the note unreadable).
  try {
    parseNote(note + line);
  } catch (e) {
    throw new AgentVpnError('INTERNAL', `cannot cosign as ${cosigner.name.slice(0, 140)}: ${(e as Error).message}`, 'this is a bug in agentvpn: report it', { cause: e });
  }
  return note + line;
}

export interface Cosigned extends Checkpoint {
  /** When the witness cosigned it (POSIX seconds). */
  cosignedAt: number;
}

/**
 * Checks the witness's cosignature on a checkpoint note and parses the checkpoint. The log's own
 * signature is not checked here (openCheckpoint does that). Throws AUDIT_NOT_COSIGNED when the
 * witness's line is missing, AUDIT_NOTE_BAD_SIGNATURE when it does not verify.
 */
export function openCosigned(note: string | Uint8Array, witness: NoteVerifier): Cosigned {
  const parsed = parseNote(note);
  const keyId = cosignerKeyIdOf(witness.name, witness.publicKey);
  const line = parsed.signatures.find((s) => s.name === witness.name && keyId.equals(s.keyId));
  if (!line) {
    throw new AgentVpnError('AUDIT_NOT_COSIGNED', `the checkpoint has no cosignature from ${witness.name}`, "use a checkpoint the registry returned (agentvpn audit verify fetches the registry's latest)");
  }
  const checkpoint = parseCheckpoint(parsed.text);
  const bytes = Buffer.from(line.signature);
  if (bytes.length !== TIMESTAMP_SIZE + SIG_SIZE) throw badCosignature(witness.name);
  const time = bytes.readBigUInt64BE(0);
  if (time > BigInt(Number.MAX_SAFE_INTEGER)) throw badCosignature(witness.name);
  const cosignedAt = Number(time);
  if (!verifySignature(witness.publicKey, signedMessage(parsed.text, cosignedAt), bytes.subarray(TIMESTAMP_SIZE))) throw badCosignature(witness.name);
  return { ...checkpoint, cosignedAt };
}

function badCosignature(name: string): AgentVpnError {
  return new AgentVpnError('AUDIT_NOTE_BAD_SIGNATURE', `the cosignature of ${name} does not verify`, 'the checkpoint was altered after it was cosigned, or the cosignature is forged: keep a copy as evidence');
}
