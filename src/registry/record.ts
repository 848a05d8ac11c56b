import { Identity, verifySignature } from '../identity/identity.js';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import { overlayIPv6 } from '../identity/addresses.js';
import { verifyKeyChain } from '../identity/rotation.js';
import { parseAddress } from '../ip/prefix.js';
import { formatCapability, parseCapability, MAX_CAPABILITIES } from '../net/capabilities.js';
import { NAME_PATTERN, NETWORK_PATTERN } from '../net/names.js';

/**
 * An agent record: what the fleet knows about an agent. It is signed by the agent's current
 * Ed25519 key: the key its ID encodes, or after a rotation (`key`) a key the agent's key chain
 * (identity/rotation.ts) proves from the ID. So a registry (or anyone in between) can store and
 * relay records but cannot forge or alter one.
 */
export interface AgentRecord {
  v: 1;
  network: string;
  id: string;
  name: string;
  /** WireGuard (X25519) public key, base64; must be the one derived from the signing (current) key. */
  wgPublicKey: string;
  ipv4: string;
  ipv6: string;
  /** Underlay UDP endpoints where the agent may be reached, "ip:port" / "[ip6]:port". */
  endpoints: string[];
  capabilities: string[];
  /** Grows with every new record from the same agent; older ones are refused. */
  seq: number;
  issuedAt: number;
  expiresAt: number;
  /** base64 current Ed25519 key after a rotation; absent (never the ID's key itself) until the first one. */
  key?: string;
  /** The relay (by its advertised name) this agent is reached through when relayed; absent: one-relay networks, older agents. */
  homeRelay?: string;
}

export interface SignedRecord {
  record: AgentRecord;
  /** base64 Ed25519 signature over canonicalRecordBytes(record). */
  signature: string;
}

/** An agent listens on a few addresses (LAN, reflexive, mapped, v4 and v6); 16 is plenty. */
const MAX_ENDPOINTS = 16;
/** "[" + the longest IPv6 text (45) + "]:" + port: longer strings cannot be endpoints, so they are not parsed. */
const MAX_ENDPOINT_CHARS = 53;
/**
 * All capability strings of a record together: every agent keeps its record in every peer and
 * in every snapshot the registry streams, so a record must stay small (with the other caps a
 * record is under 4 KiB).
 */
export const MAX_CAPABILITY_CHARS = 2048;
/** Base64 of a 32-byte key, and of a 64-byte Ed25519 signature: nothing else is parsed. */
const KEY_BASE64 = /^[A-Za-z0-9+/]{43}=$/;
const SIGNATURE_BASE64 = /^[A-Za-z0-9+/]{86}==$/;
/** The longest address texts ("255.255.255.255", a full IPv6 with an embedded IPv4). */
const MAX_IPV4_CHARS = 15;
const MAX_IPV6_CHARS = 45;
/** A record may be valid for at most this long; agents re-sign well before it runs out. */
export const RECORD_LIFETIME_MS = 24 * 3600_000;
/** Clocks differ: a record dated this far ahead is still believed. */
const MAX_FUTURE_SKEW_MS = 5 * 60_000;
const ENDPOINT = /^(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):(\d{1,5})$/;

const FIELDS: (keyof AgentRecord)[] = ['v', 'network', 'id', 'name', 'wgPublicKey', 'ipv4', 'ipv6', 'endpoints', 'capabilities', 'seq', 'issuedAt', 'expiresAt'];
const FIELD_SET = new Set<string>(FIELDS);

/** A record's optional fields: the current key, the home relay, signed after the others (records without them keep their bytes). */
const OPTIONAL_FIELDS = ['key', 'homeRelay'];
for (const f of OPTIONAL_FIELDS) FIELD_SET.add(f);

/**
 * The exact bytes that are signed: a domain label, then the fields in a fixed order as JSON;
 * `key` follows when present, then `homeRelay` when present as {"homeRelay": name} (an object, so
 * it can never be read as a `key` string: a signature covers one meaning only).
 */
export function canonicalRecordBytes(r: AgentRecord): Buffer {
  const values: unknown[] = FIELDS.map((f) => r[f]);
  if (r.key !== undefined) values.push(r.key);
  if (r.homeRelay !== undefined) values.push({ homeRelay: r.homeRelay });
  return Buffer.from('agentvpn record v1\n' + JSON.stringify(values));
}

/** Signs `record` with the identity's current key, naming that key in `key` once the identity has rotated. */
export function signRecord(identity: Identity, record: AgentRecord): SignedRecord {
  const { key: _omitted, ...rest } = record;
  const signed: AgentRecord = identity.seq > 0 ? { ...rest, key: Buffer.from(identity.publicKey).toString('base64') } : rest;
  return { record: signed, signature: Buffer.from(identity.sign(canonicalRecordBytes(signed))).toString('base64') };
}

/**
 * A copy holding exactly the signed fields. Whoever keeps or passes on a record keeps this
 * copy, so nothing the signature does not cover (a padded database row, say) travels along.
 */
export function canonicalRecord(r: AgentRecord): AgentRecord {
  return {
    v: r.v, network: r.network, id: r.id, name: r.name, wgPublicKey: r.wgPublicKey, ipv4: r.ipv4, ipv6: r.ipv6,
    endpoints: [...r.endpoints], capabilities: [...r.capabilities], seq: r.seq, issuedAt: r.issuedAt, expiresAt: r.expiresAt,
    ...(r.key !== undefined ? { key: r.key } : {}),
    ...(r.homeRelay !== undefined ? { homeRelay: r.homeRelay } : {}),
  };
}

export type RecordProblem =
  | 'MALFORMED_RECORD' | 'BAD_SIGNATURE' | 'KEY_MISMATCH' | 'EXPIRED_RECORD' | 'WRONG_NETWORK' | 'BAD_CHAIN' | 'STALE_KEY';

export interface RecordCheck {
  ok: boolean;
  problem?: RecordProblem;
  detail?: string;
}

function fail(problem: RecordProblem, detail: string): RecordCheck {
  return { ok: false, problem, detail };
}

function isEndpoint(s: unknown): boolean {
  if (typeof s !== 'string' || s.length > MAX_ENDPOINT_CHARS) return false;
  const m = ENDPOINT.exec(s);
  if (!m) return false;
  const host = m[1].startsWith('[') ? m[1].slice(1, -1) : m[1];
  return parseAddress(host) !== null && Number(m[2]) > 0 && Number(m[2]) < 65536;
}

/**
 * Checks a record's shape only (exactly the signed fields, their types, sizes and formats).
 * Fields the signature does not cover are refused rather than dropped: a sender that adds
 * them is not speaking this version of the protocol.
 */
function shapeProblem(r: AgentRecord): string | null {
  if (!r || typeof r !== 'object' || Array.isArray(r)) return 'not an object';
  const unknown = Object.keys(r).find((k) => !FIELD_SET.has(k));
  if (unknown !== undefined) return `unknown field "${unknown.slice(0, 40)}" (a record holds only the signed fields)`;
  if (r.v !== 1) return 'unsupported version';
  if (typeof r.network !== 'string' || !NETWORK_PATTERN.test(r.network)) return 'bad network name';
  if (typeof r.name !== 'string' || !NAME_PATTERN.test(r.name)) return 'bad name (lowercase letters, digits and -, up to 63)';
  if (typeof r.wgPublicKey !== 'string' || !KEY_BASE64.test(r.wgPublicKey)) return 'bad wgPublicKey';
  const v4 = typeof r.ipv4 === 'string' && r.ipv4.length <= MAX_IPV4_CHARS ? parseAddress(r.ipv4) : null;
  if (!v4 || v4.length !== 4) return 'bad ipv4';
  if (typeof r.ipv6 !== 'string' || r.ipv6.length > MAX_IPV6_CHARS || parseAddress(r.ipv6)?.length !== 16) return 'bad ipv6';
  if (!Array.isArray(r.endpoints) || r.endpoints.length > MAX_ENDPOINTS || !r.endpoints.every(isEndpoint)) return `bad endpoints (at most ${MAX_ENDPOINTS} "ip:port")`;
  if (!Array.isArray(r.capabilities) || r.capabilities.length > MAX_CAPABILITIES) return `bad capabilities (at most ${MAX_CAPABILITIES})`;
  let chars = 0;
  for (const c of r.capabilities) {
    if (typeof c !== 'string') return 'bad capability (not text)';
    chars += c.length;
    if (chars > MAX_CAPABILITY_CHARS) return `capabilities are longer than ${MAX_CAPABILITY_CHARS} characters together`;
    try {
      if (formatCapability(parseCapability(c)) !== c) return `capability "${c.slice(0, 80)}" is not in canonical form`;
    } catch {
      return `bad capability "${c.slice(0, 40)}"`;
    }
  }
  for (const n of [r.seq, r.issuedAt, r.expiresAt]) if (!Number.isSafeInteger(n) || n < 0) return 'bad seq or times';
  if (r.key !== undefined && (typeof r.key !== 'string' || !KEY_BASE64.test(r.key))) return 'bad key';
  if (r.homeRelay !== undefined && (typeof r.homeRelay !== 'string' || !NAME_PATTERN.test(r.homeRelay))) return 'bad homeRelay (a relay name: lowercase letters, digits and -)';
  return null;
}

/** A record together with what proves its key: the agent's key chain (the registry serves it in AgentView.chain). */
export type RecordWithChain = SignedRecord & { chain?: readonly unknown[] };

/**
 * Everything a peer (or the registry) checks before believing a record: shape; the signing key
 * (the ID's key, or `key` proven by the chain from the ID); when a chain comes along, that the
 * record is signed by its last key (an older, rotated-out key signs nothing any more); the
 * signature; the WireGuard key derived from the signing key; the IPv6 derived from the ID key;
 * expiry. Chain checks come before the record signature; signatures come last among checks
 * of the record itself, after every cheap one that can refuse it.
 */
export function verifyRecord(signed: RecordWithChain, opts: { network?: string; now?: number } = {}): RecordCheck {
  if (!signed || typeof signed !== 'object' || typeof signed.signature !== 'string') return fail('MALFORMED_RECORD', 'missing record or signature');
  if (!SIGNATURE_BASE64.test(signed.signature)) return fail('MALFORMED_RECORD', 'signature is not a base64 Ed25519 signature');
  const r = signed.record;
  const shape = shapeProblem(r);
  if (shape) return fail('MALFORMED_RECORD', shape);
  const idKey = publicKeyOfAgentId(r.id);
  if (!idKey) return fail('MALFORMED_RECORD', 'id is not a valid agent ID');
  const idKeyText = Buffer.from(idKey).toString('base64');
  if (r.key === idKeyText) return fail('MALFORMED_RECORD', 'key is the agent ID key: leave it out');
  // Bytes, not texts: the record's address may be written in any valid form (shapeProblem parsed it).
  if (!Buffer.from(overlayIPv6(r.network, idKey)).equals(parseAddress(r.ipv6)!)) {
    return fail('KEY_MISMATCH', 'ipv6 is not the address derived from the agent ID key');
  }
  if (opts.network !== undefined && r.network !== opts.network) return fail('WRONG_NETWORK', `record is for network ${r.network}`);
  const keyText = r.key ?? idKeyText;
  const key = Buffer.from(keyText, 'base64');
  if (wgKeyText(key) !== r.wgPublicKey) return fail('KEY_MISMATCH', 'wgPublicKey is not derived from the key that signs the record');
  if (signed.chain !== undefined || r.key !== undefined) {
    if (signed.chain === undefined) return fail('BAD_CHAIN', 'the record is signed by a rotated key but comes without a key chain');
    const chain = verifyKeyChain(r.id, signed.chain);
    if (!chain.ok) return fail('BAD_CHAIN', chain.problem);
    if (Buffer.from(chain.currentKey).toString('base64') !== keyText) {
      return fail('STALE_KEY', 'the record is not signed by the current key of its key chain');
    }
  }
  const verified = verifySignature(key, canonicalRecordBytes(r), Buffer.from(signed.signature, 'base64'));
  return afterSignature(r, verified, opts);
}

/** The record key's X25519 form in base64, or null for a key that is not a usable point (libsodium refuses it). */
function wgKeyText(key: Uint8Array): string | null {
  try {
    return Buffer.from(Identity.wgPublicKeyOf(key)).toString('base64');
  } catch {
    return null;
  }
}

/** The checks after the signature's: the signature itself, then expiry and lifetime. */
function afterSignature(r: AgentRecord, verified: boolean, opts: { now?: number }): RecordCheck {
  if (!verified) {
    return fail('BAD_SIGNATURE', r.key === undefined ? 'signature does not verify with the key in the agent ID' : 'signature does not verify with the record key');
  }
  const now = opts.now ?? Date.now();
  if (r.expiresAt <= now) return fail('EXPIRED_RECORD', 'record has expired');
  // A record cannot be made to live forever, nor be dated in the future, so old ones age out.
  if (r.issuedAt > r.expiresAt || r.expiresAt - r.issuedAt > RECORD_LIFETIME_MS || r.issuedAt > now + MAX_FUTURE_SKEW_MS) {
    return fail('MALFORMED_RECORD', 'record lifetime is longer than allowed or starts in the future');
  }
  return { ok: true };
}
