import { createHash } from 'node:crypto';
import { AgentVpnError } from '../errors.js';
import { signWith, verifySignature, type SigningKey } from '../identity/ed25519.js';
import { HASH_SIZE } from './merkle.js';

/**
 * Checkpoints (c2sp.org/tlog-checkpoint) in signed notes (c2sp.org/signed-note), Ed25519 only.
 *
 * Checkpoint body (the note text), every line ending in "\n":
 * | line | content                                                                  |
 * | ---- | ------------------------------------------------------------------------ |
 * | 1    | origin: non-empty, the log's identity (agentvpn: the agent's key name)   |
 * | 2    | tree size: ASCII decimal, no leading zeros ("0" for the empty tree)      |
 * | 3    | root hash: standard padded base64 of the 32-byte RFC 9162 tree head      |
 * | 4..  | extension lines: optional, opaque, each non-empty                        |
 *
 * Signed note: text, one empty line, then signature lines:
 * | part            | content                                                                 |
 * | --------------- | ----------------------------------------------------------------------- |
 * | text            | UTF-8, ends in "\n", no control characters but "\n"                     |
 * | separator       | "\n" (the last empty line of the note)                                  |
 * | signature line  | "— " (U+2014, space) key name " " base64(key ID \|\| signature) "\n"     |
 * | key name        | non-empty, no Unicode spaces, no "+"                                    |
 * | key ID          | SHA-256(key name \|\| 0x0A \|\| 0x01 \|\| 32-byte Ed25519 public key)[0:4] |
 * | signature       | Ed25519 over the text (with its final "\n"), 64 bytes                   |
 *
 * Parsing is strict and capped (sizes below); every refusal is an AgentVpnError with a hint.
 * Verification follows the spec: signatures from unknown keys (name and ID not both matching)
 * are ignored; a known key's bad signature rejects the note; no good known signature rejects it.
 */

/** A checkpoint with 16 signatures (the least the spec lets a verifier cap at) from 128-byte names is ~4 KB; 8 KiB leaves room for the body. */
export const MAX_NOTE_BYTES = 8192;
/** The signed-note spec: verifiers MUST accept at least 16 signatures; we accept no more. */
export const MAX_SIGNATURES = 16;
/** Key names are schema-less URLs; 128 bytes is ample and bounds a signature line. */
export const MAX_KEY_NAME_BYTES = 128;
/** Signature type byte for plain Ed25519 in the signed-note spec. */
const ED25519_TYPE = 0x01;
const KEY_ID_SIZE = 4;
const ED25519_SIG_SIZE = 64;
export const SIG_PREFIX = '\u2014 ';
/** Tree sizes beyond 2^53 - 1 are not exact JS numbers: at most 16 digits. */
const SIZE_LINE = /^(0|[1-9][0-9]{0,15})$/;

export interface Checkpoint {
  origin: string;
  size: number;
  rootHash: Uint8Array;
  /** Extension lines, without their newlines. */
  extensions: string[];
}

export interface NoteSignature {
  name: string;
  keyId: Uint8Array;
  /** The signature bytes after the key ID. */
  signature: Uint8Array;
}

export interface Note {
  /** The signed text, with its final newline. */
  text: string;
  signatures: NoteSignature[];
}

export interface NoteSigner {
  name: string;
  key: SigningKey;
}

export interface NoteVerifier {
  name: string;
  publicKey: Uint8Array;
}

function malformed(what: string, detail: string): AgentVpnError {
  return new AgentVpnError(
    what === 'checkpoint' ? 'AUDIT_CHECKPOINT_MALFORMED' : 'AUDIT_NOTE_MALFORMED',
    `${what} is malformed: ${detail}`,
    'the file or message was damaged or not written by agentvpn: restore it from a copy, or fetch it again from its source',
  );
}

/** Something we were about to write is invalid: our bug, not damaged input. */
function writeError(what: string, detail: string, cause?: unknown): AgentVpnError {
  return new AgentVpnError('INTERNAL', `cannot write this ${what}: ${detail}`, 'this is a bug in agentvpn: report it', { cause });
}

/** Runs a parse of something we are about to write, turning its refusal into a writeError. */
function writing<T>(what: string, check: () => T): T {
  try {
    return check();
  } catch (e) {
    throw writeError(what, (e as Error).message, e);
  }
}

/** SHA-256(name || 0x0A || type || public key)[0:4]; type 0x01 for a note signature (0x04: a cosignature). */
export function keyIdOf(name: string, publicKey: Uint8Array, type = ED25519_TYPE): Buffer {
  return createHash('sha256').update(name, 'utf8').update(Buffer.from([0x0a, type])).update(publicKey).digest().subarray(0, KEY_ID_SIZE);
}

function checkKeyName(name: string, what: string): void {
  if (name.length === 0) throw malformed(what, 'a key name is empty');
  if (Buffer.byteLength(name, 'utf8') > MAX_KEY_NAME_BYTES) throw malformed(what, `a key name is longer than ${MAX_KEY_NAME_BYTES} bytes`);
  if (/[\s\u0085+]/u.test(name) || hasBadCharacters(name)) throw malformed(what, 'a key name contains a space, a "+" or a control character');
}

/** Control characters other than "\n", or lone surrogates (not encodable as UTF-8). */
function hasBadCharacters(s: string): boolean {
  return /[\u0000-\u0009\u000b-\u001f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/** Strict standard base64: only canonical, padded encodings decode. */
function decodeBase64(s: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) return undefined;
  const bytes = Buffer.from(s, 'base64');
  return bytes.toString('base64') === s ? bytes : undefined;
}

/** The note text of a checkpoint. Throws AgentVpnError if a field cannot be written unambiguously. */
export function formatCheckpoint(cp: Checkpoint): string {
  const text =
    [cp.origin, String(cp.size), Buffer.from(cp.rootHash).toString('base64'), ...cp.extensions].join('\n') + '\n';
  // What we write must read back as the same checkpoint (no newline hidden in a field, an exact size).
  const back = writing('checkpoint', () => parseCheckpoint(text));
  const same =
    back.origin === cp.origin && back.size === cp.size && Buffer.from(cp.rootHash).equals(back.rootHash) &&
    back.extensions.length === cp.extensions.length && back.extensions.every((e, i) => e === cp.extensions[i]);
  if (!same) throw writeError('checkpoint', 'a field contains a newline');
  return text;
}

/** Parses a checkpoint body (a note's text). */
export function parseCheckpoint(text: string): Checkpoint {
  const what = 'checkpoint';
  if (typeof text !== 'string') throw malformed(what, 'not text');
  if (Buffer.byteLength(text, 'utf8') > MAX_NOTE_BYTES) throw malformed(what, `larger than ${MAX_NOTE_BYTES} bytes`);
  if (hasBadCharacters(text)) throw malformed(what, 'it contains a control character or invalid UTF-8');
  if (!text.endsWith('\n')) throw malformed(what, 'it does not end with a newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) throw malformed(what, 'fewer than three lines (origin, tree size, root hash)');
  if (lines.some((l) => l.length === 0)) throw malformed(what, 'it has an empty line');
  const [origin, sizeLine, rootLine, ...extensions] = lines as [string, string, string, ...string[]];
  if (!SIZE_LINE.test(sizeLine) || !Number.isSafeInteger(Number(sizeLine))) throw malformed(what, `tree size "${sizeLine.slice(0, 20)}" is not a decimal number without leading zeros`);
  const rootHash = decodeBase64(rootLine);
  if (!rootHash || rootHash.length !== HASH_SIZE) throw malformed(what, `the root hash is not the base64 of ${HASH_SIZE} bytes`);
  return { origin, size: Number(sizeLine), rootHash, extensions };
}

/** Signs `text` (which must end in "\n") with each signer; returns the signed note. */
export function signNote(text: string, signers: readonly NoteSigner[]): string {
  if (signers.length === 0 || signers.length > MAX_SIGNATURES) throw writeError('note', `it needs 1 to ${MAX_SIGNATURES} signers`);
  const lines = signers.map(({ name, key }) => {
    writing('note', () => checkKeyName(name, 'note'));
    const sig = signWith(key, Buffer.from(text, 'utf8'));
    return `${SIG_PREFIX}${name} ${Buffer.concat([keyIdOf(name, key.publicKey), sig]).toString('base64')}\n`;
  });
  const note = `${text}\n${lines.join('')}`;
  // Refuses a text we could not read back (no final newline, control characters, too large).
  if (writing('note', () => parseNote(note)).text !== text) throw writeError('note', 'the text does not end with a newline');
  return note;
}

/** Splits a signed note into its text and signature lines; checks syntax only, no signature. */
export function parseNote(input: string | Uint8Array): Note {
  const what = 'note';
  let note: string;
  if (typeof input === 'string') {
    // length first: a UTF-16 unit is at least one UTF-8 byte, so a huge string is refused without a scan.
    if (input.length > MAX_NOTE_BYTES || Buffer.byteLength(input, 'utf8') > MAX_NOTE_BYTES) throw tooLarge();
    note = input;
  } else if (input instanceof Uint8Array) {
    if (input.length > MAX_NOTE_BYTES) throw tooLarge();
    try {
      note = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(input);
    } catch {
      throw malformed(what, 'it is not valid UTF-8');
    }
  } else {
    throw malformed(what, 'not text');
  }
  if (hasBadCharacters(note)) throw malformed(what, 'it contains a control character or invalid UTF-8');
  if (!note.endsWith('\n')) throw malformed(what, 'it does not end with a newline');
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw malformed(what, 'no empty line separates the text from the signatures');
  const text = note.slice(0, split + 1);
  const sigLines = note.slice(split + 2, -1).split('\n');
  if (sigLines.length > MAX_SIGNATURES) throw malformed(what, `more than ${MAX_SIGNATURES} signatures`);
  const signatures = sigLines.map((line) => {
    if (!line.startsWith(SIG_PREFIX)) throw malformed(what, 'a signature line does not start with "— "');
    const parts = line.slice(SIG_PREFIX.length).split(' ');
    if (parts.length !== 2) throw malformed(what, 'a signature line is not "— <key name> <base64>"');
    const [name, b64] = parts as [string, string];
    checkKeyName(name, what);
    const bytes = decodeBase64(b64);
    if (!bytes || bytes.length <= KEY_ID_SIZE) throw malformed(what, `the signature of ${name} is not base64 of a key ID and a signature`);
    return { name, keyId: bytes.subarray(0, KEY_ID_SIZE), signature: bytes.subarray(KEY_ID_SIZE) };
  });
  return { text, signatures };
}

function tooLarge(): AgentVpnError {
  return new AgentVpnError('AUDIT_NOTE_TOO_LARGE', `note is larger than ${MAX_NOTE_BYTES} bytes`, 'a checkpoint is a few hundred bytes: this is not one; fetch it again from its source');
}

/**
 * Parses and verifies a signed note against trusted keys. Returns the note and the names of the
 * trusted keys that signed it. Throws AUDIT_NOTE_BAD_SIGNATURE if a trusted key's signature fails,
 * AUDIT_NOTE_UNVERIFIED if no trusted key signed it.
 */
export function verifyNote(input: string | Uint8Array, verifiers: readonly NoteVerifier[]): Note & { verifiedBy: string[] } {
  const note = parseNote(input);
  const message = Buffer.from(note.text, 'utf8');
  const verifiedBy: string[] = [];
  for (const sig of note.signatures) {
    const known = verifiers.find((v) => v.name === sig.name && keyIdOf(v.name, v.publicKey).equals(sig.keyId));
    if (!known) continue;
    if (sig.signature.length !== ED25519_SIG_SIZE || !verifySignature(known.publicKey, message, sig.signature)) {
      throw new AgentVpnError('AUDIT_NOTE_BAD_SIGNATURE', `the signature of ${sig.name} on this note does not verify`, 'the note was altered after signing or forged: do not trust it, and keep a copy as evidence');
    }
    if (!verifiedBy.includes(sig.name)) verifiedBy.push(sig.name);
  }
  if (verifiedBy.length === 0) {
    const names = note.signatures.map((s) => s.name).join(', ');
    throw new AgentVpnError('AUDIT_NOTE_UNVERIFIED', `no trusted key signed this note (signed by: ${names})`, 'check that you verify with the public key of the log that wrote it (agentvpn whois shows an agent\'s key)');
  }
  return { ...note, verifiedBy };
}

/** A signed checkpoint note. */
export function signCheckpoint(cp: Checkpoint, signers: readonly NoteSigner[]): string {
  return signNote(formatCheckpoint(cp), signers);
}

/** Verifies a signed checkpoint note and parses its body. */
export function openCheckpoint(input: string | Uint8Array, verifiers: readonly NoteVerifier[]): Checkpoint & { verifiedBy: string[] } {
  const note = verifyNote(input, verifiers);
  return { ...parseCheckpoint(note.text), verifiedBy: note.verifiedBy };
}
