import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentVpnError } from '../errors.js';
import { publicKeyOfAgentId } from '../identity/agent-id.js';
import { parseAddress } from '../ip/prefix.js';
import { NAME_PATTERN, NETWORK_PATTERN } from '../net/names.js';
import { writeFileAtomic } from '../util/atomic-file.js';

/**
 * The trust store: the agents this agent has decided about, like SSH's known_hosts. One entry
 * per agent ID, bound to the name and overlay IPv4 it was first seen with, holding the key we
 * trust for it (its current key, proven by its key chain) and the statement that made that key
 * current. Kept in `<stateDir>/trust-<network>.json`, written atomically with mode 0600:
 *
 * | field       | type                         | meaning                                                       |
 * | ----------- | ---------------------------- | ------------------------------------------------------------- |
 * | v           | 1                            | file format version                                           |
 * | network     | network name                 | the network this store is for                                 |
 * | entries     | TrustEntry[]                 | at most MAX_TRUST_ENTRIES; IDs, names and IPv4s each unique   |
 * | .id         | agent ID                     | the agent (its inception key)                                 |
 * | .name       | name or null                 | the name it is bound to (null: blocked by ID, never seen)     |
 * | .ipv4       | IPv4 or null                 | the overlay IPv4 it is bound to                               |
 * | .key        | base64 Ed25519 key           | the key we trust now                                          |
 * | .keySeq     | integer                      | that key's place in the agent's key chain (0 = the ID key)    |
 * | .statement  | base64 SHA-256, optional     | hash of the chain statement that made `key` current           |
 * | .state      | pinned approved pending blocked changed | see trust/decide.ts                                |
 * | .firstSeen  | ms since epoch               | when the entry was made                                       |
 * | .lastSeen   | ms since epoch               | when the agent was last seen (kept to the hour on disk)       |
 * | .offered    | TrustOffer, optional         | what a `changed` (or blocked) entry was last offered instead  |
 *
 * A file that does not parse is an error with a hint, never silently reset: resetting would
 * trust every key anew, which is what an attacker who corrupts it would want.
 */

export type TrustState = 'pinned' | 'approved' | 'pending' | 'blocked' | 'changed';
export type TrustMode = 'tofu' | 'approve' | 'open';
export const TRUST_STATES: readonly TrustState[] = ['pinned', 'approved', 'pending', 'blocked', 'changed'];
export const TRUST_MODES: readonly TrustMode[] = ['tofu', 'approve', 'open'];

/** Another agent (or another key of this one) presented for a known name, IPv4 or ID. */
export interface TrustOffer {
  id: string;
  name: string;
  ipv4: string;
  key: string;
  keySeq: number;
  statement?: string;
  at: number;
}

export interface TrustEntry {
  id: string;
  name: string | null;
  ipv4: string | null;
  key: string;
  keySeq: number;
  statement?: string;
  state: TrustState;
  firstSeen: number;
  lastSeen: number;
  offered?: TrustOffer;
}

/** An entry as `trust list` shows it: with the fingerprints of the pinned and offered keys. */
export type TrustListEntry = Omit<TrustEntry, 'offered'> & { fingerprint: string; offered?: TrustOffer & { fingerprint: string } };

/** Entries to write and agent IDs to drop, as decide() and the operator actions produce them. */
export interface TrustUpdate {
  put: TrustEntry[];
  remove: string[];
}

/** What decide() reads: lookups by ID, name and IPv4. */
export interface TrustLookup {
  readonly size: number;
  get(id: string): TrustEntry | undefined;
  byName(name: string): TrustEntry | undefined;
  byIpv4(ipv4: string): TrustEntry | undefined;
  /** The pending entry seen longest ago (what a full store gives up first), if any. */
  oldestPending(): TrustEntry | undefined;
}

/** Far more agents than a network holds; caps the file and the memory a flood of new IDs can take. */
export const MAX_TRUST_ENTRIES = 10_000;
/** MAX_TRUST_ENTRIES entries of ~700 bytes each, with room: a bigger file is not parsed. */
const MAX_FILE_BYTES = 16 * 1024 * 1024;
/** lastSeen alone is written at most this often: a chatty registry must not make us fsync per record. */
export const LAST_SEEN_WRITE_MS = 3600_000;
/**
 * What decide() changes is written within this delay, in one write: a snapshot of a thousand
 * new agents (or a registry flooding new IDs) costs one rewrite of the file, not one each. A
 * crash inside the delay loses only pins the next records make again. Operator actions are
 * written before they return.
 */
export const WRITE_DELAY_MS = 1000;
/** Chain positions are below identity/rotation.ts MAX_CHAIN; a little slack for the future. */
const MAX_KEY_SEQ = 1024;
const KEY_BASE64 = /^[A-Za-z0-9+/]{43}=$/;

/** "SHA256:" + unpadded base64 of the key's SHA-256, as ssh-keygen -l prints fingerprints. */
export function fingerprint(keyBase64: string): string {
  return 'SHA256:' + createHash('sha256').update(Buffer.from(keyBase64, 'base64')).digest('base64').replace(/=+$/, '');
}

/** The key an agent ID encodes, base64 (the key of an agent that never rotated). */
export function idKeyOf(id: string): string | null {
  const k = publicKeyOfAgentId(id);
  return k ? Buffer.from(k).toString('base64') : null;
}

function isIpv4(s: unknown): s is string {
  return typeof s === 'string' && s.length <= 15 && parseAddress(s)?.length === 4;
}
function isTime(n: unknown): n is number {
  return Number.isSafeInteger(n) && (n as number) >= 0;
}
function isSeq(n: unknown): n is number {
  return Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) < MAX_KEY_SEQ;
}
function isHash(s: unknown): boolean {
  return s === undefined || (typeof s === 'string' && KEY_BASE64.test(s));
}

function parseOffer(o: unknown): TrustOffer | null {
  if (!o || typeof o !== 'object' || Array.isArray(o)) return null;
  const x = o as Record<string, unknown>;
  if (Object.keys(x).some((k) => !['id', 'name', 'ipv4', 'key', 'keySeq', 'statement', 'at'].includes(k))) return null;
  if (typeof x.id !== 'string' || !idKeyOf(x.id) || typeof x.name !== 'string' || !NAME_PATTERN.test(x.name) || !isIpv4(x.ipv4)) return null;
  if (typeof x.key !== 'string' || !KEY_BASE64.test(x.key) || !isSeq(x.keySeq) || !isHash(x.statement) || !isTime(x.at)) return null;
  return { id: x.id, name: x.name, ipv4: x.ipv4, key: x.key, keySeq: x.keySeq, ...(x.statement !== undefined ? { statement: x.statement as string } : {}), at: x.at };
}

/** One entry from the file, or a sentence saying what is wrong with it. */
export function parseTrustEntry(o: unknown): TrustEntry | string {
  if (!o || typeof o !== 'object' || Array.isArray(o)) return 'is not an object';
  const x = o as Record<string, unknown>;
  const unknown = Object.keys(x).find((k) => !['id', 'name', 'ipv4', 'key', 'keySeq', 'statement', 'state', 'firstSeen', 'lastSeen', 'offered'].includes(k));
  if (unknown !== undefined) return `has an unknown field "${unknown.slice(0, 40)}"`;
  if (typeof x.id !== 'string' || !idKeyOf(x.id)) return 'has no valid agent ID';
  if (x.name !== null && (typeof x.name !== 'string' || !NAME_PATTERN.test(x.name))) return 'has a bad name';
  if (x.ipv4 !== null && !isIpv4(x.ipv4)) return 'has a bad ipv4';
  if (typeof x.key !== 'string' || !KEY_BASE64.test(x.key)) return 'has a bad key';
  if (!isSeq(x.keySeq) || (x.keySeq === 0) !== (x.key === idKeyOf(x.id))) return 'has a keySeq that does not fit its key';
  if (!isHash(x.statement)) return 'has a bad statement hash';
  if (!TRUST_STATES.includes(x.state as TrustState)) return `has an unknown state (one of ${TRUST_STATES.join(', ')})`;
  if (!isTime(x.firstSeen) || !isTime(x.lastSeen)) return 'has bad times';
  if ((x.name === null || x.ipv4 === null) && x.state !== 'blocked') return 'has no name or ipv4 but is not blocked';
  const offered = x.offered === undefined ? undefined : parseOffer(x.offered);
  if (offered === null) return 'has a bad offered key';
  return {
    id: x.id, name: x.name as string | null, ipv4: x.ipv4 as string | null, key: x.key, keySeq: x.keySeq,
    ...(x.statement !== undefined ? { statement: x.statement as string } : {}),
    state: x.state as TrustState, firstSeen: x.firstSeen, lastSeen: x.lastSeen, ...(offered ? { offered } : {}),
  };
}

/** The whole file's entries, or a sentence saying what is wrong (for TRUST_STORE_CORRUPT). */
export function parseTrustFile(text: string, network: string): TrustEntry[] | string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return 'is not JSON';
  }
  if (!o || typeof o !== 'object' || Array.isArray(o) || o.v !== 1 || !Array.isArray(o.entries)) return 'is not a trust store (v 1)';
  if (o.network !== network) return `is for network ${JSON.stringify(o.network).slice(0, 80)}, not ${network}`;
  if (o.entries.length > MAX_TRUST_ENTRIES) return `has more than ${MAX_TRUST_ENTRIES} entries`;
  const entries: TrustEntry[] = [];
  const ids = new Set<string>();
  const names = new Set<string>();
  const ipv4s = new Set<string>();
  for (let i = 0; i < o.entries.length; i++) {
    const e = parseTrustEntry(o.entries[i]);
    if (typeof e === 'string') return `entry ${i} ${e}`;
    if (ids.has(e.id) || (e.name !== null && names.has(e.name)) || (e.ipv4 !== null && ipv4s.has(e.ipv4))) return `entry ${i} repeats an agent ID, name or ipv4`;
    ids.add(e.id);
    if (e.name !== null) names.add(e.name);
    if (e.ipv4 !== null) ipv4s.add(e.ipv4);
    entries.push(e);
  }
  return entries;
}

function trustError(code: string, message: string, hint: string): AgentVpnError {
  return new AgentVpnError(code, message, hint);
}

/** The trust store of one network, in memory, written through to its file. */
export class TrustStore implements TrustLookup {
  private readonly entries = new Map<string, TrustEntry>();
  /** Agent ID by name and by IPv4: every record looks both up, in a store of up to MAX_TRUST_ENTRIES. */
  private readonly names = new Map<string, string>();
  private readonly ipv4s = new Map<string, string>();
  private lastWrite = 0;
  private dirty = false;
  private timer: NodeJS.Timeout | null = null;
  /** Writes of the file so far (the cost a flood of updates can cause). */
  writes = 0;

  private constructor(readonly file: string, readonly network: string, entries: TrustEntry[], private readonly onWriteError: (e: AgentVpnError) => void) {
    for (const e of entries) this.set(e);
  }

  private set(e: TrustEntry): void {
    this.unset(e.id);
    this.entries.set(e.id, e);
    if (e.name !== null) this.names.set(e.name, e.id);
    if (e.ipv4 !== null) this.ipv4s.set(e.ipv4, e.id);
  }

  private unset(id: string): boolean {
    const old = this.entries.get(id);
    if (!old) return false;
    if (old.name !== null && this.names.get(old.name) === id) this.names.delete(old.name);
    if (old.ipv4 !== null && this.ipv4s.get(old.ipv4) === id) this.ipv4s.delete(old.ipv4);
    return this.entries.delete(id);
  }

  static path(stateDir: string, network: string): string {
    return join(stateDir, `trust-${network}.json`);
  }

  /**
   * Opens (or starts empty) the store for `network`; a file that does not parse is
   * TRUST_STORE_CORRUPT. `onWriteError` hears of a failed delayed write (the next write retries).
   */
  static open(stateDir: string, network: string, onWriteError: (e: AgentVpnError) => void = () => {}): TrustStore {
    if (!NETWORK_PATTERN.test(network)) throw trustError('BAD_NETWORK', `bad network name ${JSON.stringify(network).slice(0, 80)}`, 'network names are lowercase letters, digits and -, up to 63');
    const file = TrustStore.path(stateDir, network);
    if (!existsSync(file)) return new TrustStore(file, network, [], onWriteError);
    let text: string;
    try {
      const data = readFileSync(file);
      if (data.length > MAX_FILE_BYTES) throw trustError('TRUST_STORE_CORRUPT', `trust store ${file} is larger than ${MAX_FILE_BYTES} bytes`, corruptHint(file));
      text = data.toString('utf8');
    } catch (e) {
      if (e instanceof AgentVpnError) throw e;
      throw new AgentVpnError('TRUST_STORE_UNREADABLE', `cannot read trust store ${file}: ${(e as Error).message}`, 'run as root (sudo), or pass --state-dir to a directory you own', { cause: e });
    }
    const parsed = parseTrustFile(text, network);
    if (typeof parsed === 'string') throw trustError('TRUST_STORE_CORRUPT', `trust store ${file} ${parsed}`, corruptHint(file));
    return new TrustStore(file, network, parsed, onWriteError);
  }

  get size(): number {
    return this.entries.size;
  }

  get(id: string): TrustEntry | undefined {
    return this.entries.get(id);
  }

  byName(name: string): TrustEntry | undefined {
    const id = this.names.get(name);
    return id === undefined ? undefined : this.entries.get(id);
  }

  byIpv4(ipv4: string): TrustEntry | undefined {
    const id = this.ipv4s.get(ipv4);
    return id === undefined ? undefined : this.entries.get(id);
  }

  oldestPending(): TrustEntry | undefined {
    let oldest: TrustEntry | undefined;
    for (const e of this.entries.values()) if (e.state === 'pending' && (!oldest || e.lastSeen < oldest.lastSeen)) oldest = e;
    return oldest;
  }

  all(): TrustEntry[] {
    return [...this.entries.values()];
  }

  /** The entries with their fingerprints, sorted by name (blocked IDs without a name last): what trustList answers. */
  list(): TrustListEntry[] {
    return this.all()
      .sort((a, b) => (a.name ?? '\uffff' + a.id).localeCompare(b.name ?? '\uffff' + b.id))
      .map(({ offered, ...e }): TrustListEntry => ({ ...e, fingerprint: fingerprint(e.key), ...(offered ? { offered: { ...offered, fingerprint: fingerprint(offered.key) } } : {}) }));
  }

  /**
   * Applies an update from decide(): written within WRITE_DELAY_MS when it changes anything but
   * lastSeen; lastSeen alone is written at most every LAST_SEEN_WRITE_MS.
   */
  apply(update: TrustUpdate, now = Date.now()): void {
    if (this.change(update, now)) this.timer ??= setTimeout(() => this.flushQuietly(), WRITE_DELAY_MS).unref();
  }

  /** Writes pending changes now (call it before the daemon exits). */
  flush(now = Date.now()): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.dirty) this.save(now);
  }

  /** An operator's change: in memory and on disk before it returns. */
  private applyNow(update: TrustUpdate, now: number): void {
    this.change(update, now);
    this.flush(now);
  }

  /** Changes the entries; true when the file should be written (soon). */
  private change(update: TrustUpdate, now: number): boolean {
    let significant = false;
    for (const id of update.remove) significant = this.unset(id) || significant;
    for (const e of update.put) {
      const old = this.entries.get(e.id);
      if (!old || JSON.stringify({ ...old, lastSeen: 0 }) !== JSON.stringify({ ...e, lastSeen: 0 })) significant = true;
      this.set(e);
    }
    if (significant || (update.put.length > 0 && now - this.lastWrite >= LAST_SEEN_WRITE_MS)) this.dirty = true;
    return this.dirty;
  }

  private flushQuietly(): void {
    try {
      this.flush();
    } catch (e) {
      this.onWriteError(e as AgentVpnError);
    }
  }

  private save(now: number): void {
    const text = JSON.stringify({ v: 1, network: this.network, entries: this.all() }, null, 1) + '\n';
    try {
      writeFileAtomic(this.file, text, 0o600);
    } catch (e) {
      throw new AgentVpnError('STATE_DIR_UNWRITABLE', `cannot write trust store ${this.file}: ${(e as Error).message}`, 'run as root (sudo), or pass --state-dir to a writable directory', { cause: e });
    }
    this.dirty = false;
    this.lastWrite = now;
    this.writes++;
  }

  /** `trust accept NAME`: the key offered for NAME (or for the IPv4 NAME holds) becomes pinned; the entries it collided with go. */
  accept(name: string, now = Date.now()): TrustEntry {
    const entry = this.all().find((e) => e.state === 'changed' && e.offered && (e.name === name || e.offered.name === name));
    if (!entry?.offered) {
      throw trustError('TRUST_NOTHING_TO_ACCEPT', `no changed key is waiting for ${name}`, '`agentvpn trust list` shows the entries in state changed');
    }
    const o = entry.offered;
    const collided = this.all().filter((e) => e.id === o.id || e.id === entry.id || e.name === o.name || e.ipv4 === o.ipv4);
    const blocked = collided.find((e) => e.state === 'blocked');
    if (blocked) throw trustError('TRUST_BLOCKED', `${blocked.name ?? blocked.id} is blocked`, `\`agentvpn trust forget ${blocked.name ?? blocked.id}\` first if you mean to let it in`);
    const pinned: TrustEntry = {
      id: o.id, name: o.name, ipv4: o.ipv4, key: o.key, keySeq: o.keySeq, ...(o.statement ? { statement: o.statement } : {}),
      state: 'pinned', firstSeen: now, lastSeen: now,
    };
    this.applyNow({ remove: collided.map((e) => e.id), put: [pinned] }, now);
    return pinned;
  }

  /** `trust approve NAME`: a pending (or pinned) agent is let in. */
  approve(name: string, now = Date.now()): TrustEntry {
    const entry = this.named(name);
    if (entry.state === 'blocked') throw trustError('TRUST_BLOCKED', `${name} is blocked`, `\`agentvpn trust forget ${name}\` first if you mean to let it in`);
    if (entry.state === 'changed') throw trustError('TRUST_CHANGED', `${name} shows a changed key`, `check it, then \`agentvpn trust accept ${name}\``);
    const approved: TrustEntry = { ...entry, state: 'approved' };
    this.applyNow({ remove: [], put: [approved] }, now);
    return approved;
  }

  /** `trust block NAME|ID`: never admitted again; an ID never seen is blocked ahead of time. */
  block(target: string, now = Date.now()): TrustEntry {
    const known = this.entries.get(target) ?? this.byName(target);
    const idKey = idKeyOf(target);
    if (!known && !idKey) {
      throw trustError('TRUST_UNKNOWN', `no agent named ${target.slice(0, 80)} is known`, 'block it by its agent ID (av...), or see the names with `agentvpn trust list`');
    }
    const blocked: TrustEntry = known
      ? { ...known, state: 'blocked' }
      : { id: target, name: null, ipv4: null, key: idKey!, keySeq: 0, state: 'blocked', firstSeen: now, lastSeen: now };
    if (!known && this.size >= MAX_TRUST_ENTRIES) throw trustError('TRUST_STORE_FULL', `the trust store holds ${MAX_TRUST_ENTRIES} entries`, 'forget agents that are gone with `agentvpn trust forget NAME`');
    this.applyNow({ remove: [], put: [blocked] }, now);
    return blocked;
  }

  /** `trust forget NAME` (or ID): the entry goes; the next agent seen under that name is trusted on first use again. */
  forget(target: string, now = Date.now()): TrustEntry {
    const entry = this.entries.get(target) ?? this.named(target);
    this.applyNow({ remove: [entry.id], put: [] }, now);
    return entry;
  }

  private named(name: string): TrustEntry {
    const e = this.byName(name);
    if (!e) throw trustError('TRUST_UNKNOWN', `no agent named ${name.slice(0, 80)} is in the trust store`, '`agentvpn trust list` shows the known agents');
    return e;
  }
}

function corruptHint(file: string): string {
  return `fix the file, or restore it from a backup; moving it away forgets every pinned key (each agent is then trusted anew on first use), so do that only if you know why it broke (${file})`;
}
