import { existsSync, readFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import sodium from 'sodium-native';
import { AgentVpnError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { agentIdOf } from './agent-id.js';
import { publicKeyOfSeed, randomSeed, signingKeyOf, signWith, type SigningKey } from './ed25519.js';
import { keyCommitment, makeInception, makeRotation, MAX_CHAIN, statementHash, verifyKeyChain, type KeyStatement } from './rotation.js';

export { verifySignature } from './ed25519.js';

export const DEFAULT_STATE_DIR = '/var/lib/agentvpn';
/** The inception seed, as every version before key rotation wrote it; removed after the first rotation. */
const LEGACY_FILE = 'identity.key';
/**
 * The identity's whole state, written atomically in one file so a crash leaves either the old or
 * the new key set, never a mix:
 *   { "v": 1, "key": base64 seed of the current key, "next": base64 seed of the committed next key,
 *     "chain": [KeyStatement...] (rotation.ts) }
 */
const STATE_FILE = 'identity.json';
/** A chain of MAX_CHAIN statements and two seeds is ~40 KiB; a bigger file is not parsed. */
const MAX_STATE_BYTES = 256 * 1024;

export function stateDir(explicit?: string): string {
  return explicit ?? process.env.AGENTVPN_STATE_DIR ?? DEFAULT_STATE_DIR;
}

/** Whether `dir` holds an identity (of any version). */
export function hasIdentity(dir: string): boolean {
  return existsSync(join(dir, STATE_FILE)) || existsSync(join(dir, LEGACY_FILE));
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}

function corrupt(file: string, what: string): AgentVpnError {
  return new AgentVpnError('IDENTITY_CORRUPT', `identity state ${file} ${what}`, 'restore the state directory from a backup; deleting it gives this agent a new identity and new addresses');
}

function unwritable(dir: string, e: unknown): AgentVpnError {
  return new AgentVpnError('STATE_DIR_UNWRITABLE', `cannot write the identity in ${dir}: ${(e as Error).message}`, 'run as root (sudo), or pass --state-dir to a writable directory', { cause: e });
}

function readText(file: string, limit: number): string {
  try {
    const data = readFileSync(file);
    if (data.length > limit) throw corrupt(file, `is larger than ${limit} bytes`);
    return data.toString('utf8');
  } catch (e) {
    if (e instanceof AgentVpnError) throw e;
    throw new AgentVpnError('IDENTITY_UNREADABLE', `cannot read identity ${file}: ${(e as Error).message}`, 'run as root (sudo), or pass --state-dir to a directory you own', { cause: e });
  }
}

function seedFrom(text: unknown, file: string): Uint8Array {
  const seed = typeof text === 'string' && /^[A-Za-z0-9+/]{43}=$/.test(text) ? Buffer.from(text, 'base64') : null;
  if (!seed || seed.length !== 32) throw corrupt(file, 'does not hold 32-byte base64 keys');
  return seed;
}

interface KeyState {
  seed: Uint8Array;
  nextSeed: Uint8Array;
  chain: KeyStatement[];
}

/** Reads and fully checks the state file: the chain verifies, and both seeds are the keys it names and commits to. */
function readState(file: string): KeyState {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(readText(file, MAX_STATE_BYTES)) as Record<string, unknown>;
  } catch (e) {
    if (e instanceof AgentVpnError) throw e;
    throw corrupt(file, 'is not JSON');
  }
  if (!o || typeof o !== 'object' || o.v !== 1 || !Array.isArray(o.chain)) throw corrupt(file, 'is not an identity state (v 1)');
  const seed = seedFrom(o.key, file);
  const nextSeed = seedFrom(o.next, file);
  const chain = o.chain as KeyStatement[];
  const id = typeof chain[0]?.id === 'string' ? chain[0].id : '';
  const check = verifyKeyChain(id, chain);
  if (!check.ok) throw corrupt(file, `has a key chain that does not verify: ${check.problem}`);
  const last = chain[chain.length - 1];
  if (last.key !== b64(publicKeyOfSeed(seed))) throw corrupt(file, 'holds a current key that is not the last key of its chain');
  if (last.next !== keyCommitment(publicKeyOfSeed(nextSeed))) throw corrupt(file, 'holds a next key that its chain did not commit to');
  return { seed, nextSeed, chain };
}

function writeState(dir: string, s: KeyState): void {
  const text = JSON.stringify({ v: 1, key: b64(s.seed), next: b64(s.nextSeed), chain: s.chain }) + '\n';
  try {
    writeFileAtomic(join(dir, STATE_FILE), text, 0o600);
  } catch (e) {
    throw unwritable(dir, e);
  }
}

/**
 * An agent's identity. Its agent ID encodes its first (inception) Ed25519 key and never
 * changes, nor do the addresses derived from it. The CURRENT key signs and gives the WireGuard
 * (X25519) key pair; the key chain (rotation.ts) proves it from the ID. The next key is
 * committed to in the chain and kept in the state directory (read only to rotate).
 */
export class Identity {
  readonly id: string;
  /** The inception key: what the ID encodes and the overlay IPv6 derives from. */
  readonly idKey: Uint8Array;
  /** The current key (the idKey until the first rotation). */
  readonly publicKey: Uint8Array;
  readonly wgPrivateKey: Uint8Array;
  readonly wgPublicKey: Uint8Array;
  /** The statements proving publicKey from the ID: [inception, rotation 1, ...]. */
  readonly chain: readonly KeyStatement[];
  /** Rotations so far (the seq of the last statement). */
  readonly seq: number;
  private readonly signingKey: SigningKey;
  /** The next key's seed when the identity lives in memory only; a stored one is read from disk to rotate. */
  private readonly nextSeed: Uint8Array | null;
  private readonly dir: string | null;

  /** `new Identity(seed)`: an unrotated identity in memory (a fresh next key); the rest is for loadOrCreate/rotate. */
  constructor(seed: Uint8Array, from?: { chain: KeyStatement[]; nextSeed: Uint8Array | null; dir: string | null }) {
    this.signingKey = signingKeyOf(seed);
    this.publicKey = this.signingKey.publicKey;
    const wgPrivateKey = Buffer.alloc(32);
    sodium.crypto_sign_ed25519_sk_to_curve25519(wgPrivateKey, this.signingKey.secret);
    this.wgPrivateKey = wgPrivateKey;
    this.wgPublicKey = Identity.wgPublicKeyOf(this.publicKey);
    if (from) {
      this.chain = from.chain;
      this.nextSeed = from.nextSeed;
      this.dir = from.dir;
    } else {
      this.nextSeed = randomSeed();
      this.chain = [makeInception(agentIdOf(this.publicKey), this.publicKey, this.signingKey, publicKeyOfSeed(this.nextSeed))];
      this.dir = null;
    }
    this.idKey = Buffer.from(this.chain[0].key, 'base64');
    this.id = this.chain[0].id;
    this.seq = this.chain.length - 1;
  }

  static generate(): Identity {
    return new Identity(randomSeed());
  }

  sign(message: Uint8Array): Uint8Array {
    return signWith(this.signingKey, message);
  }

  /** The current key as a signed-note signer named `name` (audit checkpoints). */
  noteSigner(name: string): { name: string; key: SigningKey } {
    return { name, key: this.signingKey };
  }

  /**
   * Moves to the pre-committed next key and commits to a fresh one. The new state is written
   * (atomically) before the new Identity is returned, and the rotated-out key is destroyed, so a
   * crash at any point leaves the old or the new identity, both usable. Throws KEY_CHAIN_FULL at
   * MAX_CHAIN statements and IDENTITY_STALE if another process rotated the stored identity.
   */
  rotate(): Identity {
    if (this.chain.length >= MAX_CHAIN) {
      throw new AgentVpnError('KEY_CHAIN_FULL', `this identity has rotated ${this.seq} times, the most a key chain may hold`, 'peers believe chains of at most 64 statements: to rotate again, start a new identity (a new ID and addresses)');
    }
    const nextSeed = this.nextSeed ?? this.storedNextSeed();
    const newNext = randomSeed();
    const nextKey = publicKeyOfSeed(nextSeed);
    const statement = makeRotation(this.chain[this.seq], this.signingKey, nextKey, signingKeyOf(nextSeed), publicKeyOfSeed(newNext));
    const chain = [...this.chain, statement];
    if (this.dir) {
      writeState(this.dir, { seed: nextSeed, nextSeed: newNext, chain });
      removeRotatedOutKey(this.dir);
    }
    return new Identity(nextSeed, { chain, nextSeed: this.dir ? null : newNext, dir: this.dir });
  }

  private storedNextSeed(): Uint8Array {
    const file = join(this.dir!, STATE_FILE);
    const state = readState(file);
    if (statementHash(state.chain[state.chain.length - 1]) !== statementHash(this.chain[this.seq])) {
      throw new AgentVpnError('IDENTITY_STALE', `the identity in ${file} was rotated by another process`, 'restart the agent so it loads the current key');
    }
    return state.nextSeed;
  }

  /** Loads the identity from `dir`, creating it (mode 0600) on first run; a pre-rotation dir (identity.key only) gets its inception statement. */
  static loadOrCreate(dir: string): Identity {
    const stateFile = join(dir, STATE_FILE);
    const legacyFile = join(dir, LEGACY_FILE);
    if (existsSync(stateFile)) {
      const state = readState(stateFile);
      if (existsSync(legacyFile)) {
        if (state.chain.length > 1) removeRotatedOutKey(dir); // a crash between rotate's write and its removal
        else if (b64(seedFrom(readText(legacyFile, 1024).trim(), legacyFile)) !== b64(state.seed)) {
          throw new AgentVpnError('IDENTITY_CORRUPT', `${legacyFile} and ${stateFile} hold different identities`, `keep the one you want and delete the other (delete ${stateFile} to keep the key in ${LEGACY_FILE})`);
        }
      }
      return new Identity(state.seed, { chain: state.chain, nextSeed: null, dir });
    }
    let seed: Uint8Array;
    if (existsSync(legacyFile)) {
      seed = seedFrom(readText(legacyFile, 1024).trim(), legacyFile);
    } else {
      seed = randomSeed();
      // Written first and kept until the first rotation, so tools that read identity.key keep working.
      try {
        writeFileAtomic(legacyFile, b64(seed) + '\n', 0o600);
      } catch (e) {
        throw unwritable(dir, e);
      }
    }
    const nextSeed = randomSeed();
    const publicKey = publicKeyOfSeed(seed);
    const chain = [makeInception(agentIdOf(publicKey), publicKey, signingKeyOf(seed), publicKeyOfSeed(nextSeed))];
    writeState(dir, { seed, nextSeed, chain });
    return new Identity(seed, { chain, nextSeed: null, dir });
  }

  /** The WireGuard-facing public key of an agent's Ed25519 key (cached: see WG_KEY_CACHE_SIZE). */
  static wgPublicKeyOf(publicKey: Uint8Array): Uint8Array {
    const cacheKey = Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.length).toString('latin1');
    const cached = wgKeys.get(cacheKey);
    if (cached) return cached.slice();
    const key = new Uint8Array(32);
    // libsodium: 33 µs where noble's pure JS took 96 (measured here); it refuses a key that is not a
    // curve point of the main subgroup by throwing, so such a key is never cached.
    sodium.crypto_sign_ed25519_pk_to_curve25519(key, publicKey);
    if (wgKeys.size >= WG_KEY_CACHE_SIZE) wgKeys.delete(wgKeys.keys().next().value!);
    wgKeys.set(cacheKey, key.slice());
    return key;
  }
}

/**
 * Converting an Ed25519 key to its X25519 key decompresses a point (~33 µs in libsodium); every
 * publish of a record checks it, and a daemon converts each peer's key. 16,384 keys of 32 bytes
 * (~2 MB with the map); the oldest converted goes first.
 */
const WG_KEY_CACHE_SIZE = 16_384;
const wgKeys = new Map<string, Uint8Array>();

/** A rotated-out key is destroyed: with it and a stolen current key a thief could fork the chain. */
function removeRotatedOutKey(dir: string): void {
  try {
    unlinkSync(join(dir, LEGACY_FILE));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw unwritable(dir, e);
  }
}
