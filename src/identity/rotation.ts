import { createHash } from 'node:crypto';
import { publicKeyOfAgentId } from './agent-id.js';
import { signWith, verifySignature, type SigningKey } from './ed25519.js';

/**
 * Key statements: how an agent's current Ed25519 key is proven from its agent ID (which is its
 * first, "inception", key and never changes). Each statement names the key of its step and
 * commits to the hash of the NEXT key (pre-rotation, as in KERI), so whoever steals the current
 * key still cannot rotate the identity to a key of his own: only the holder of the pre-committed
 * next key can make the next statement.
 *
 * A statement travels as a JSON object with exactly these fields:
 *
 * | field      | type                       | meaning                                                        |
 * | ---------- | -------------------------- | -------------------------------------------------------------- |
 * | v          | 1                          | format version                                                 |
 * | kind       | "inception" \| "rotation"  | inception: seq 0, the ID's own key; rotation: every later step |
 * | id         | agent ID                   | the identity this statement belongs to                         |
 * | seq        | integer 0..MAX_CHAIN-1     | position in the chain (0 = inception)                          |
 * | key        | base64, 32 bytes           | the Ed25519 public key of this step                            |
 * | next       | base64, 32 bytes           | SHA-256 of the next step's public key (the commitment)         |
 * | prev       | base64, 32 bytes \| null   | SHA-256 of the previous statement's canonical bytes; null at 0 |
 * | sigs.prior | base64, 64 bytes           | rotation only: signature by the previous statement's `key`     |
 * | sigs.self  | base64, 64 bytes           | signature by `key` (proves the new key's holder made it)       |
 *
 * | bytes            | definition (UTF-8)                                                          |
 * | ---------------- | --------------------------------------------------------------------------- |
 * | signed bytes     | "agentvpn key statement v1\n" + JSON [v, kind, id, seq, key, next, prev]   |
 * | canonical bytes  | signed bytes + "\n" + JSON [sigs.prior or null, sigs.self]                  |
 *
 * Both signatures cover the signed bytes. A chain is valid when statement 0 is an inception
 * whose key is the ID's key, and every statement i > 0 has seq i, prev = SHA-256(canonical bytes
 * of statement i-1), SHA-256(key) = statement i-1's `next`, a key used nowhere before in the
 * chain, and both signatures. The chain's last key is the current key.
 */

/** Longest chain believed: a rotation a day for two months; caps the work one record can cost (2 verifies per statement). */
export const MAX_CHAIN = 64;
const LABEL = 'agentvpn key statement v1\n';
const KEY_BASE64 = /^[A-Za-z0-9+/]{43}=$/;
const SIGNATURE_BASE64 = /^[A-Za-z0-9+/]{86}==$/;
const FIELDS = new Set(['v', 'kind', 'id', 'seq', 'key', 'next', 'prev', 'sigs']);
/** Agent IDs are "av" + 52 base32 characters; anything longer is not looked at. */
const MAX_ID_CHARS = 54;

export interface KeyStatement {
  v: 1;
  kind: 'inception' | 'rotation';
  id: string;
  seq: number;
  key: string;
  next: string;
  prev: string | null;
  sigs: { prior?: string; self: string };
}

export type ChainCheck = { ok: true; currentKey: Uint8Array; seq: number } | { ok: false; problem: string };

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}

function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

/** The pre-rotation commitment to a public key: base64 SHA-256 of its 32 bytes. */
export function keyCommitment(publicKey: Uint8Array): string {
  return b64(sha256(publicKey));
}

export function signedBytes(s: KeyStatement): Buffer {
  return Buffer.from(LABEL + JSON.stringify([s.v, s.kind, s.id, s.seq, s.key, s.next, s.prev]));
}

export function canonicalStatementBytes(s: KeyStatement): Buffer {
  return Buffer.concat([signedBytes(s), Buffer.from('\n' + JSON.stringify([s.sigs.prior ?? null, s.sigs.self]))]);
}

/** base64 SHA-256 of a statement's canonical bytes: what the next statement's `prev` names. */
export function statementHash(s: KeyStatement): string {
  return b64(sha256(canonicalStatementBytes(s)));
}

/**
 * A statement from untrusted JSON, or null: exactly the fields of the table, each of its type
 * and size, kind consistent with seq, prev and sigs. Returns a fresh copy (nothing else travels on).
 */
export function parseKeyStatement(json: unknown): KeyStatement | null {
  if (!json || typeof json !== 'object' || Array.isArray(json)) return null;
  const o = json as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length !== FIELDS.size || !keys.every((k) => FIELDS.has(k))) return null;
  if (o.v !== 1 || (o.kind !== 'inception' && o.kind !== 'rotation')) return null;
  if (typeof o.id !== 'string' || o.id.length > MAX_ID_CHARS || !publicKeyOfAgentId(o.id)) return null;
  if (!Number.isSafeInteger(o.seq) || (o.seq as number) < 0 || (o.seq as number) >= MAX_CHAIN) return null;
  if (typeof o.key !== 'string' || !KEY_BASE64.test(o.key) || typeof o.next !== 'string' || !KEY_BASE64.test(o.next)) return null;
  const inception = o.kind === 'inception';
  if (inception !== (o.seq === 0)) return null;
  if (inception ? o.prev !== null : typeof o.prev !== 'string' || !KEY_BASE64.test(o.prev)) return null;
  const sigs = o.sigs as Record<string, unknown> | null;
  if (!sigs || typeof sigs !== 'object' || Array.isArray(sigs)) return null;
  const sigKeys = Object.keys(sigs);
  const expected = inception ? ['self'] : ['prior', 'self'];
  if (sigKeys.length !== expected.length || !expected.every((k) => typeof sigs[k] === 'string' && SIGNATURE_BASE64.test(sigs[k] as string))) return null;
  return {
    v: 1, kind: o.kind as KeyStatement['kind'], id: o.id, seq: o.seq as number, key: o.key, next: o.next, prev: o.prev as string | null,
    sigs: inception ? { self: sigs.self as string } : { prior: sigs.prior as string, self: sigs.self as string },
  };
}

/**
 * Statements whose signatures were already checked, by canonical hash. Sound because a
 * statement's hash fixes its `prev`, hence the statement (and key) that must sign it as prior;
 * every chain still has its links and commitments checked. It makes the same chain, seen in
 * every record an agent publishes, cost hashing only. Bounded: cleared when full.
 */
const verified = new Set<string>();
/** Room for the chains of a large fleet (a few statements each); ~100 bytes apiece. */
const MAX_VERIFIED = 8192;

/** What chain checks cost so far in this process (for status and for tests that measure it). */
export const chainCounters = { signatureChecks: 0, statementsRemembered: 0 };

function signaturesHold(s: KeyStatement, hash: string, prior: Uint8Array | null): boolean {
  if (verified.has(hash)) {
    chainCounters.statementsRemembered++;
    return true;
  }
  chainCounters.signatureChecks += prior ? 2 : 1;
  const bytes = signedBytes(s);
  const key = Buffer.from(s.key, 'base64');
  if (!verifySignature(key, bytes, Buffer.from(s.sigs.self, 'base64'))) return false;
  if (prior && !verifySignature(prior, bytes, Buffer.from(s.sigs.prior!, 'base64'))) return false;
  if (verified.size >= MAX_VERIFIED) verified.clear();
  verified.add(hash);
  return true;
}

/**
 * Checks that `chain` (KeyStatements, or untrusted JSON: each is parsed strictly) proves, from
 * agent ID `id`, its last key. Length first, then every structural check, then signatures.
 */
export function verifyKeyChain(id: string, chain: readonly unknown[]): ChainCheck {
  if (!Array.isArray(chain) || chain.length === 0) return { ok: false, problem: 'no key statements' };
  if (chain.length > MAX_CHAIN) return { ok: false, problem: `chain longer than ${MAX_CHAIN} statements` };
  const idKey = publicKeyOfAgentId(id);
  if (!idKey) return { ok: false, problem: 'not a valid agent ID' };
  const statements: KeyStatement[] = [];
  const hashes: string[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < chain.length; i++) {
    const s = parseKeyStatement(chain[i]);
    if (!s) return { ok: false, problem: `statement ${i} is malformed` };
    if (s.id !== id) return { ok: false, problem: `statement ${i} belongs to another agent ID` };
    if (s.seq !== i) return { ok: false, problem: `statement ${i} has seq ${s.seq} (replayed, missing or reordered statement)` };
    if (seen.has(s.key)) return { ok: false, problem: `statement ${i} names a key used before in the chain` };
    if (i === 0) {
      if (s.key !== b64(idKey)) return { ok: false, problem: 'the inception statement does not name the key of the agent ID' };
    } else {
      const before = statements[i - 1];
      if (s.prev !== hashes[i - 1]) return { ok: false, problem: `statement ${i} does not link to statement ${i - 1} (forked or replayed chain)` };
      if (keyCommitment(Buffer.from(s.key, 'base64')) !== before.next) {
        return { ok: false, problem: `statement ${i} names a key other than the one statement ${i - 1} committed to` };
      }
    }
    seen.add(s.key);
    statements.push(s);
    hashes.push(statementHash(s));
  }
  for (let i = 0; i < statements.length; i++) {
    const prior = i === 0 ? null : Buffer.from(statements[i - 1].key, 'base64');
    if (!signaturesHold(statements[i], hashes[i], prior)) return { ok: false, problem: `statement ${i} has a signature that does not verify` };
  }
  const last = statements[statements.length - 1];
  return { ok: true, currentKey: Buffer.from(last.key, 'base64'), seq: last.seq };
}

/** Whether `key` is one of the chain's keys (use on a chain verifyKeyChain accepted). */
export function chainDescendsFrom(chain: readonly unknown[], key: Uint8Array): boolean {
  const k = b64(key);
  return Array.isArray(chain) && chain.some((s) => (s as Partial<KeyStatement> | null)?.key === k);
}

/** The first statement of an identity: its own key, committing to the next one. */
export function makeInception(id: string, key: Uint8Array, signer: SigningKey, nextKey: Uint8Array): KeyStatement {
  const s: KeyStatement = { v: 1, kind: 'inception', id, seq: 0, key: b64(key), next: keyCommitment(nextKey), prev: null, sigs: { self: '' } };
  s.sigs.self = b64(signWith(signer, signedBytes(s)));
  return s;
}

/** The statement moving `prev`'s identity to `key` (which `prev` committed to), committing to `nextKey`. */
export function makeRotation(prev: KeyStatement, priorSigner: SigningKey, key: Uint8Array, signer: SigningKey, nextKey: Uint8Array): KeyStatement {
  const s: KeyStatement = {
    v: 1, kind: 'rotation', id: prev.id, seq: prev.seq + 1, key: b64(key), next: keyCommitment(nextKey), prev: statementHash(prev),
    sigs: { prior: '', self: '' },
  };
  const bytes = signedBytes(s);
  s.sigs = { prior: b64(signWith(priorSigner, bytes)), self: b64(signWith(signer, bytes)) };
  return s;
}
