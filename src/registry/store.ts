import type { Prefix } from '../ip/prefix.js';
import type { SignedRecord } from './record.js';

/**
 * What the registry keeps. Each method is one atomic step, so a shared database behind this
 * interface can later back several registry instances; the embedded default is SQLite
 * (sqlite-store.ts). Methods are async for such backends even where SQLite is synchronous.
 */

export interface StoredToken {
  /** hashToken(token): the token itself is never stored. */
  hash: string;
  network: string;
  createdAt: number;
  /** null: never expires. */
  expiresAt: number | null;
  /** null: unlimited. */
  usesLeft: number | null;
  /** Tags every agent that joins with this token gets (validated by tags.ts). */
  tags: string[];
}

/**
 * An agent that proved its key and was admitted to a network. An operator may remove it (the
 * row goes); its IPv4 is still never given to another agent, as the pool's index only grows.
 */
export interface Member {
  id: string;
  network: string;
  name: string;
  ipv4: string;
  joinedAt: number;
  /** From the token it joined with. */
  tags: string[];
}

/** An agent ID an operator blocked in a network: it cannot join it again, with any token. */
export interface BlockedAgent {
  network: string;
  id: string;
  /** Its name when it was blocked (for the operator's listing). */
  name: string;
  blockedAt: number;
}

/** A network's policy text (validated before it is stored), versioned from 1. */
export interface StoredPolicy {
  network: string;
  version: number;
  text: string;
  setAt: number;
}

/** meta key: the seq of the last operator action the registry's own audit log holds (registry-log.ts). */
export const LOGGED_ACTIONS_KEY = 'registry_log_action_seq';
/** meta key: the host part of the witness key's name the registry last ran with (so a verifier names the key the same way). */
export const WITNESS_HOST_KEY = 'witness_host';

/**
 * What an operator did to the database, in order. A registry process polls for new actions
 * each sweep, so a CLI run on the same database reaches the running server within ~1 s.
 */
export interface OperatorAction {
  seq: number;
  network: string;
  action: 'remove' | 'block' | 'policy' | 'admin-token' | 'token';
  /** The agent acted on ('remove', 'block'); the token's hash ('token', 'admin-token'). */
  id: string | null;
  at: number;
  /** Facts for the registry's audit log: {name, wasMember} (remove, block), {version, sha256 of the text} (policy), {expiresAt, uses, tags} (token). */
  detail: Record<string, unknown> | null;
}

export type RemoveResult =
  | { ok: true; id: string; name: string; /** false: the ID was blocked without being a member. */ wasMember: boolean }
  | { ok: false; code: 'NOT_FOUND'; message: string };

/** An agent's key chain as the registry holds it (key-chain.ts checks it before it is stored). */
export interface StoredKeyChain {
  id: string;
  /** The statements, as canonical JSON objects (rotation.ts KeyStatement). */
  chain: unknown[];
  /** The current Ed25519 public key (base64): the last statement's key. */
  key: string;
}

export interface StoredRecord {
  network: string;
  id: string;
  signed: SignedRecord;
  lastSeen: number;
  /** False once the agent left or went silent; true again when it is heard from. */
  online: boolean;
}

export interface AdmitRequest {
  network: string;
  id: string;
  name: string;
  /** hashToken of the token presented; needed only when the ID is not yet a member. */
  tokenHash: string | null;
  /** The join's signed timestamp: taken once (replay-window.ts), in the same step as the admission. */
  timestamp: number;
  pool: Prefix;
  now: number;
}

export type AdmitResult =
  | { ok: true; member: Member; created: boolean; /** hashToken of a token this admission used up, whose holders lose their reads. */ usedUpToken: string | null }
  | { ok: false; code: 'BAD_TOKEN' | 'NAME_TAKEN' | 'POOL_EXHAUSTED' | 'REPLAYED' | 'BLOCKED'; message: string };

/** A join token authorizes reads only while it could still admit an agent. */
export type TokenCheck =
  | { ok: true; expiresAt: number | null }
  | { ok: false };

/** A signed heartbeat (online) or leave (offline). */
export interface LivenessRequest {
  network: string;
  id: string;
  online: boolean;
  lastSeen: number;
  /** The request's signed timestamp: taken once, in the same step as the liveness it sets. */
  timestamp: number;
  now: number;
}

export type LivenessResult =
  | { ok: true }
  | { ok: false; code: 'REPLAYED' | 'NOT_FOUND'; message: string };

export type TimestampResult =
  | { ok: true }
  | { ok: false; code: 'REPLAYED'; message: string };

export type PutRecordResult =
  | { ok: true; member: Member }
  | { ok: false; code: 'NOT_JOINED' | 'ADDRESS_MISMATCH' | 'NAME_TAKEN' | 'STALE_RECORD' | 'CHAIN_FORK'; message: string };

/**
 * An agent's audit log as the registry holds it (audit-ship.ts checks what is added): how many
 * entries, the compact range of their leaf hashes (compact-range.ts), the newest cosigned checkpoint.
 */
export interface AuditHead {
  agent: string;
  size: number;
  frontier: Buffer[];
  /** The checkpoint note of `size` with the witness's cosignature; null while nothing is held. */
  cosigned: string | null;
}

export interface AuditEntryRow {
  seq: number;
  /** The entry's canonical JSON, as shipped (its leaf's bytes). */
  line: string;
  leafHash: Buffer;
}

/** A ship that passed every check, stored in one step if the held size is still `from`. */
export interface AuditAppend {
  agent: string;
  from: number;
  /** seq from, from + 1, ... */
  entries: AuditEntryRow[];
  /** The compact range after these entries. */
  frontier: Buffer[];
  /** The agent's checkpoint of size from + entries.length, cosigned. */
  cosigned: string;
  now: number;
}

export type AuditAppendResult =
  | { ok: true }
  | { ok: false; code: 'AUDIT_GAP'; held: number; cosigned: string | null };

export interface StoredCheckpoint {
  agent: string;
  size: number;
  /** Cosigned note. */
  note: string;
  storedAt: number;
}

/** A ship the registry refused as inconsistent with what it holds: evidence of a fork, kept. */
export interface AuditRefusal {
  id: number;
  agent: string;
  network: string;
  at: number;
  code: string;
  reason: string;
  /** The size the registry held then. */
  held: number;
  /** The refused checkpoint's size and note (signed by the agent: with the held one, proof of a fork). */
  size: number | null;
  checkpoint: string | null;
}

export interface RegistryStore {
  addToken(token: StoredToken): Promise<void>;
  /** A network's join tokens (by hash), newest first, at most `limit`: what the console lists. */
  tokens(network: string, limit: number): Promise<StoredToken[]>;
  /** Whether the token (by hash) belongs to the network, has not expired and has a use left (reads do not take one). */
  checkToken(network: string, hash: string, now: number): Promise<TokenCheck>;
  /**
   * Admits an agent: a known ID re-joins without a token (and may take a free name); a new one
   * needs a usable token (one use is consumed), gets the next IPv4 of the pool and the token's
   * tags; a blocked ID is refused whatever it presents. A known
   * ID's timestamp is taken whatever the outcome, so no captured join is worth sending again.
   */
  admit(req: AdmitRequest): Promise<AdmitResult>;
  /** Takes the timestamp and sets the agent's liveness, in one step (REPLAYED: neither happens). */
  setOnline(req: LivenessRequest): Promise<LivenessResult>;
  /** Takes the timestamp of a signed read (an agent that is a member somewhere). */
  useTimestamp(id: string, timestamp: number, now: number): Promise<TimestampResult>;
  /**
   * Stores a verified record if its ID joined the network, its IPv4 is the allocated one, its
   * name is the member's or free (the member's name then moves), and its seq is newer. With
   * `chain` (a verified key chain), it is stored in the same step if it extends the stored one
   * (CHAIN_FORK otherwise: it shortens, forks or replaces it).
   */
  putRecord(network: string, signed: SignedRecord, now: number, chain?: StoredKeyChain): Promise<PutRecordResult>;
  /** Every stored key chain (agents that rotated their key). */
  keyChains(): Promise<StoredKeyChain[]>;
  /**
   * Removes a member (by ID or name): its record and membership go, in one step with an
   * operator action. `block`: its ID is also blocked in the network (an ID that is not a member
   * may be blocked too).
   */
  removeMember(network: string, idOrName: string, block: boolean, now: number): Promise<RemoveResult>;
  blocked(): Promise<BlockedAgent[]>;
  /** Stores a new version of a network's policy (with an operator action); returns it. */
  setPolicy(network: string, text: string, now: number): Promise<StoredPolicy>;
  policies(): Promise<StoredPolicy[]>;
  /** Operator actions after `seq`, oldest first, at most `limit`. */
  actionsSince(seq: number, limit: number): Promise<OperatorAction[]>;
  /** The seq of the newest operator action (0: none). */
  lastActionSeq(): Promise<number>;
  /** Stores an admin token's hash (hashAdminToken); the token itself is never stored. */
  addAdminToken(hash: string, now: number): Promise<void>;
  adminTokenHashes(): Promise<string[]>;
  /** Persists liveness for many agents at once (agents the server found silent, in batches). */
  setLiveness(updates: Array<{ network: string; id: string; lastSeen: number; online: boolean }>): Promise<void>;
  members(): Promise<Member[]>;
  records(): Promise<StoredRecord[]>;
  /** The agent's audit log as held (size 0, no cosigned note, when none). */
  auditHead(agent: string): Promise<AuditHead>;
  /** Every agent log held, by agent ID. */
  auditHeads(): Promise<AuditHead[]>;
  /** Appends entries and their cosigned checkpoint in one step; AUDIT_GAP (nothing stored) when the held size is no longer `from`. Never updates or deletes an entry. */
  appendAudit(a: AuditAppend): Promise<AuditAppendResult>;
  /** Entries [from, from + limit) of an agent's log, oldest first. */
  auditEntries(agent: string, from: number, limit: number): Promise<AuditEntryRow[]>;
  /** Cosigned checkpoints of sizes > afterSize, smallest first, at most `limit`. */
  auditCheckpoints(agent: string, afterSize: number, limit: number): Promise<StoredCheckpoint[]>;
  /** Stores a refusal; returns its id. */
  addAuditRefusal(r: Omit<AuditRefusal, 'id'>): Promise<number>;
  /** Refusals with id > afterId, oldest first, at most `limit`. */
  auditRefusals(afterId: number, limit: number): Promise<AuditRefusal[]>;
  /** A value the server keeps between starts (e.g. how far the registry's own log has logged operator actions). */
  getMeta(key: string): Promise<string | null>;
  setMeta(key: string, value: string): Promise<void>;
  close(): Promise<void>;
}

/** The pool's base address as a 32-bit number, and how many addresses it holds (pg-migrations.ts agentvpn_admit takes them too). */
export function poolRange(pool: Prefix): { base: number; size: number } {
  const a = pool.addr;
  const base = ((a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]) >>> 0;
  const size = 2 ** (32 - pool.bits);
  return { base: base - (base % size), size };
}

/**
 * The rule every store allocates IPv4 addresses by: the pool's `index`-th address, counting
 * from .1; its network and broadcast addresses and every x.x.x.0 and x.x.x.255 are skipped
 * (tools that assume /24 networks mistreat them). Returns the address and the next index to
 * try, or null when the pool is exhausted.
 */
export function allocateFromPool(pool: Prefix, index: number): { ipv4: string; next: number } | null {
  const { base, size } = poolRange(pool);
  for (let i = Math.max(1, index); i < size - 1; i++) {
    const n = base + i;
    const last = n & 0xff;
    if (last === 0 || last === 255) continue;
    return { ipv4: [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, last].join('.'), next: i + 1 };
  }
  return null;
}
