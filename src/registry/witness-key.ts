import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, linkSync, openSync, readFileSync, unlinkSync, writeSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { AgentVpnError } from '../errors.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf, type SigningKey } from '../identity/ed25519.js';

/**
 * The registry's witness key: one Ed25519 key that cosigns agents' audit checkpoints
 * (c2sp.org/tlog-cosignature) and signs the registry's own audit log under a second name.
 *
 * Key file (mode 0600, beside the database unless --witness-key names it), one JSON object:
 * | field | content                                   |
 * | ----- | ----------------------------------------- |
 * | v     | 1                                         |
 * | seed  | standard base64 of the 32-byte Ed25519 seed |
 *
 * | name                | value                                                            |
 * | ------------------- | ---------------------------------------------------------------- |
 * | witness key name    | agentvpn.witness/<host>/<8 hex of SHA-256(public key)>            |
 * | registry log origin | agentvpn.registry/<host>/<same 8 hex> (also its signing key name) |
 *
 * One key under two names is safe: a cosignature signs "cosignature/v1\ntime T\n" + a checkpoint,
 * a checkpoint of the registry's log starts with its origin line, so neither can be read as the
 * other; and the key IDs differ (signature types 0x04 and 0x01).
 */

/** What the key names carry when the operator gives no --witness-host. */
export const DEFAULT_WITNESS_HOST = 'registry';
/** A host part of a key name: DNS-like, so the name has no space or "+" (signed-note rules). */
const HOST_PATTERN = /^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/;
/** The file is ~60 bytes; a bigger one is not a witness key file and is not parsed. */
const MAX_FILE_BYTES = 4096;
const SEED_BASE64 = /^[A-Za-z0-9+/]{43}=$/;

export interface WitnessKey {
  /** The cosigner key name. */
  name: string;
  /** The registry's own log: its origin and signing key name. */
  registryLogName: string;
  publicKey: Buffer;
  key: SigningKey;
  file: string;
  /** Whether this start created the file. */
  created: boolean;
}

/** The default key file of a database: beside it. */
export function witnessKeyFileOf(db: string): string {
  return `${db}.witness-key`;
}

function suffixOf(host: string, publicKey: Uint8Array): string {
  if (!HOST_PATTERN.test(host)) {
    throw new AgentVpnError('BAD_WITNESS_HOST', `invalid witness host "${host.slice(0, 80)}"`, 'give --witness-host as a DNS name: lowercase letters, digits, dots and -');
  }
  return `${host}/${createHash('sha256').update(publicKey).digest('hex').slice(0, 8)}`;
}

export function witnessKeyName(host: string, publicKey: Uint8Array): string {
  return `agentvpn.witness/${suffixOf(host, publicKey)}`;
}

export function registryLogName(host: string, publicKey: Uint8Array): string {
  return `agentvpn.registry/${suffixOf(host, publicKey)}`;
}

function corrupt(file: string, what: string): AgentVpnError {
  return new AgentVpnError('WITNESS_KEY_CORRUPT', `witness key file ${file} ${what}`,
    "restore it from a backup: a new key would make every agent's pinned witness refuse the registry's cosignatures");
}

function readSeed(file: string): Buffer {
  let text: string;
  try {
    const data = readFileSync(file);
    if (data.length > MAX_FILE_BYTES) throw corrupt(file, `is larger than ${MAX_FILE_BYTES} bytes`);
    text = data.toString('utf8');
  } catch (e) {
    if (e instanceof AgentVpnError) throw e;
    throw new AgentVpnError('WITNESS_KEY_UNREADABLE', `cannot read witness key file ${file}: ${(e as Error).message}`, 'check the --witness-key path and its permissions', { cause: e });
  }
  let o: { v?: unknown; seed?: unknown };
  try {
    o = JSON.parse(text) as typeof o;
  } catch {
    throw corrupt(file, 'is not JSON');
  }
  if (!o || o.v !== 1 || typeof o.seed !== 'string' || !SEED_BASE64.test(o.seed)) throw corrupt(file, 'is not a witness key (v 1, base64 seed)');
  return Buffer.from(o.seed, 'base64');
}

/**
 * Creates the file only if it does not exist, atomically: written and fsync'd under a temporary
 * name, then hard-linked into place (link fails if another process created it first), so a
 * crash or a second registry starting at once never leaves a half-written or replaced key.
 * Returns false when the file already existed.
 */
function createKeyFile(file: string, seed: Uint8Array): boolean {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, `${JSON.stringify({ v: 1, seed: Buffer.from(seed).toString('base64') })}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  } finally {
    unlinkSync(tmp);
  }
  const dirFd = openSync(dirname(file), 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
  return true;
}

/** Loads the witness key from `file`, creating it on first start. */
export function loadWitnessKey(file: string, host = DEFAULT_WITNESS_HOST): WitnessKey {
  let created = false;
  let seed: Uint8Array;
  try {
    seed = readSeed(file);
  } catch (e) {
    if (!(e instanceof AgentVpnError && e.code === 'WITNESS_KEY_UNREADABLE' && (e.cause as NodeJS.ErrnoException)?.code === 'ENOENT')) throw e;
    const fresh = randomSeed();
    try {
      created = createKeyFile(file, fresh);
    } catch (err) {
      throw new AgentVpnError('WITNESS_KEY_UNWRITABLE', `cannot create witness key file ${file}: ${(err as Error).message}`, 'check that the directory of --witness-key (or of --db) is writable', { cause: err });
    }
    seed = created ? fresh : readSeed(file);
  }
  const publicKey = Buffer.from(publicKeyOfSeed(seed));
  return { name: witnessKeyName(host, publicKey), registryLogName: registryLogName(host, publicKey), publicKey, key: signingKeyOf(seed), file, created };
}

/** The public half of a witness key file (for verifiers: `registry audit verify`). */
export function readWitnessPublic(file: string, host = DEFAULT_WITNESS_HOST): { name: string; registryLogName: string; publicKey: Buffer } {
  const publicKey = Buffer.from(publicKeyOfSeed(readSeed(file)));
  return { name: witnessKeyName(host, publicKey), registryLogName: registryLogName(host, publicKey), publicKey };
}

/** A witness key that lives in memory only (a registry given a store and no key file: tests). */
export function ephemeralWitnessKey(host = DEFAULT_WITNESS_HOST): WitnessKey {
  const seed = randomSeed();
  const publicKey = Buffer.from(publicKeyOfSeed(seed));
  return { name: witnessKeyName(host, publicKey), registryLogName: registryLogName(host, publicKey), publicKey, key: signingKeyOf(seed), file: '', created: true };
}
