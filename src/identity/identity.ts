import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ed25519 } from '@noble/curves/ed25519.js';
import { AgentVpnError } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { agentIdOf } from './agent-id.js';

/** DER prefixes that wrap raw Ed25519 keys for node:crypto (much faster than pure JS for signing and verifying). */
const PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export const DEFAULT_STATE_DIR = '/var/lib/agentvpn';
const IDENTITY_FILE = 'identity.key';

export function stateDir(explicit?: string): string {
  return explicit ?? process.env.AGENTVPN_STATE_DIR ?? DEFAULT_STATE_DIR;
}

function publicKeyObject(publicKey: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: 'der', type: 'spki' });
}

/** Checks an Ed25519 signature; false (never throws) on malformed keys or signatures. */
export function verifySignature(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    return verify(null, message, publicKeyObject(publicKey), signature);
  } catch {
    return false;
  }
}

/**
 * An agent's identity: an Ed25519 key. Its WireGuard (X25519) key pair is derived from it,
 * so one secret, kept in the state directory, is the agent's whole identity.
 */
export class Identity {
  readonly publicKey: Uint8Array;
  readonly id: string;
  readonly wgPrivateKey: Uint8Array;
  readonly wgPublicKey: Uint8Array;
  private readonly signingKey: KeyObject;

  constructor(private readonly seed: Uint8Array) {
    this.publicKey = ed25519.getPublicKey(seed);
    this.id = agentIdOf(this.publicKey);
    this.wgPrivateKey = ed25519.utils.toMontgomerySecret(seed);
    this.wgPublicKey = ed25519.utils.toMontgomery(this.publicKey);
    this.signingKey = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
  }

  static generate(): Identity {
    return new Identity(ed25519.utils.randomSecretKey());
  }

  sign(message: Uint8Array): Uint8Array {
    return sign(null, message, this.signingKey);
  }

  /** Loads the identity from `dir`, creating it (mode 0600) on first run. */
  static loadOrCreate(dir: string): Identity {
    const file = join(dir, IDENTITY_FILE);
    if (existsSync(file)) {
      let seed: Buffer;
      try {
        seed = Buffer.from(readFileSync(file, 'utf8').trim(), 'base64');
      } catch (e) {
        throw new AgentVpnError('IDENTITY_UNREADABLE', `cannot read identity key ${file}: ${(e as Error).message}`, 'run as root (sudo), or pass --state-dir to a directory you own', { cause: e });
      }
      if (seed.length !== 32) {
        throw new AgentVpnError('IDENTITY_CORRUPT', `identity key ${file} is not 32 bytes of base64`, 'restore it from a backup; deleting it gives this agent a new identity and new addresses');
      }
      return new Identity(seed);
    }
    const identity = Identity.generate();
    try {
      writeFileAtomic(file, Buffer.from(identity.seed).toString('base64') + '\n', 0o600);
    } catch (e) {
      throw new AgentVpnError('STATE_DIR_UNWRITABLE', `cannot create identity key in ${dir}: ${(e as Error).message}`, 'run as root (sudo), or pass --state-dir to a writable directory', { cause: e });
    }
    return identity;
  }

  /** The WireGuard-facing public key of an agent's Ed25519 key. */
  static wgPublicKeyOf(publicKey: Uint8Array): Uint8Array {
    return ed25519.utils.toMontgomery(publicKey);
  }
}
