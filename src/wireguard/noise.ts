import { hash, kdf } from '../crypto/blake2s.js';
import { seal, open, constantTimeEqual } from '../crypto/aead.js';
import { dh, generatePrivateKey, publicKeyOf } from '../crypto/x25519.js';
import { tai64n, isAfter } from './tai64n.js';
import {
  MESSAGE_INITIATION, MESSAGE_RESPONSE, INITIATION_SIZE, RESPONSE_SIZE, timers,
} from './constants.js';

/**
 * The Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake exactly as WireGuard uses it
 * (whitepaper section 5.4). Messages are built without mac1/mac2; cookie.ts adds and checks those.
 */

const CONSTRUCTION = new TextEncoder().encode('Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s');
const IDENTIFIER = new TextEncoder().encode('WireGuard v1 zx2c4 Jason@zx2c4.com');
const INITIAL_CHAIN_KEY = hash(CONSTRUCTION);
const INITIAL_HASH = hash(INITIAL_CHAIN_KEY, IDENTIFIER);
const ZERO_NONCE = new Uint8Array(12);
const EMPTY = new Uint8Array(0);
const ZERO_KEY = new Uint8Array(32);

export type HandshakeStage = 'zeroed' | 'initiation-sent' | 'initiation-received' | 'response-sent' | 'response-received';

export interface SessionKeys {
  sendKey: Uint8Array;
  receiveKey: Uint8Array;
  localIndex: number;
  remoteIndex: number;
  isInitiator: boolean;
}

/** Our static identity with the values every handshake reuses. */
export class LocalIdentity {
  readonly publicKey: Uint8Array;
  constructor(readonly privateKey: Uint8Array) {
    this.publicKey = publicKeyOf(privateKey);
  }
}

/** Handshake state with one peer. */
export class Handshake {
  stage: HandshakeStage = 'zeroed';
  hash: Uint8Array = new Uint8Array(32);
  chainKey: Uint8Array = new Uint8Array(32);
  localEphemeral: Uint8Array = new Uint8Array(32);
  remoteEphemeral: Uint8Array = new Uint8Array(32);
  localIndex = 0;
  remoteIndex = 0;
  /** Greatest initiation timestamp accepted from this peer: older ones are replays. */
  latestTimestamp: Uint8Array = new Uint8Array(12);
  lastInitiationReceivedAt = -Infinity;
  readonly staticStatic: Uint8Array;
  readonly presharedKey: Uint8Array;

  constructor(local: LocalIdentity, readonly remoteStatic: Uint8Array, presharedKey?: Uint8Array) {
    this.staticStatic = dh(local.privateKey, remoteStatic);
    this.presharedKey = presharedKey ?? ZERO_KEY;
  }

  /** The same peer's handshake state under a new local static key, keeping what guards against replays. */
  forLocal(local: LocalIdentity): Handshake {
    const next = new Handshake(local, this.remoteStatic, this.presharedKey);
    next.latestTimestamp = this.latestTimestamp;
    next.lastInitiationReceivedAt = this.lastInitiationReceivedAt;
    return next;
  }

  clear(): void {
    this.stage = 'zeroed';
    this.hash.fill(0);
    this.chainKey.fill(0);
    this.localEphemeral.fill(0);
    this.remoteEphemeral.fill(0);
    this.localIndex = 0;
    this.remoteIndex = 0;
  }
}

function mixHash(h: Uint8Array, data: Uint8Array): Uint8Array {
  return hash(h, data);
}

/** Initiator: message 1. `ephemeral` is injectable for known-answer tests. */
export function createInitiation(
  local: LocalIdentity, hs: Handshake, localIndex: number,
  now = Date.now(), ephemeral = generatePrivateKey(), timestamp = tai64n(now),
): Buffer {
  const msg = Buffer.alloc(INITIATION_SIZE);
  msg[0] = MESSAGE_INITIATION;
  msg.writeUInt32LE(localIndex, 4);

  let h = mixHash(INITIAL_HASH, hs.remoteStatic);
  const ePub = publicKeyOf(ephemeral);
  let c = kdf(1, INITIAL_CHAIN_KEY, ePub)[0];
  msg.set(ePub, 8);
  h = mixHash(h, ePub);

  let key: Uint8Array;
  [c, key] = kdf(2, c, dh(ephemeral, hs.remoteStatic));
  seal(msg.subarray(40, 88), local.publicKey, h, ZERO_NONCE, key);
  h = mixHash(h, msg.subarray(40, 88));

  [c, key] = kdf(2, c, hs.staticStatic);
  seal(msg.subarray(88, 116), timestamp, h, ZERO_NONCE, key);
  h = mixHash(h, msg.subarray(88, 116));

  hs.stage = 'initiation-sent';
  hs.hash = h;
  hs.chainKey = c;
  hs.localEphemeral = ephemeral;
  hs.localIndex = localIndex;
  return msg;
}

export interface ConsumedInitiation {
  remoteStatic: Uint8Array;
  apply(hs: Handshake): boolean;
}

/**
 * Responder, first half: decrypt the initiator's static key so the caller can find the peer.
 * `apply` then checks the timestamp and flood rate against that peer's state and stores the result.
 */
export function consumeInitiation(local: LocalIdentity, msg: Uint8Array, now = Date.now()): ConsumedInitiation | null {
  if (msg.length !== INITIATION_SIZE || msg[0] !== MESSAGE_INITIATION) return null;
  const view = Buffer.from(msg.buffer, msg.byteOffset, msg.length);
  const senderIndex = view.readUInt32LE(4);
  const ePub = msg.subarray(8, 40);

  let h = mixHash(INITIAL_HASH, local.publicKey);
  let c = kdf(1, INITIAL_CHAIN_KEY, ePub)[0];
  h = mixHash(h, ePub);

  let key: Uint8Array;
  let shared: Uint8Array;
  try {
    shared = dh(local.privateKey, ePub);
  } catch {
    return null; // low-order point
  }
  [c, key] = kdf(2, c, shared);
  const remoteStatic = new Uint8Array(32);
  if (!open(remoteStatic, msg.subarray(40, 88), h, ZERO_NONCE, key)) return null;
  h = mixHash(h, msg.subarray(40, 88));
  const afterStatic = { h, c };

  return {
    remoteStatic,
    apply(hs: Handshake): boolean {
      if (!constantTimeEqual(hs.remoteStatic, remoteStatic)) return false;
      const [c2, key2] = kdf(2, afterStatic.c, hs.staticStatic);
      const timestamp = new Uint8Array(12);
      if (!open(timestamp, msg.subarray(88, 116), afterStatic.h, ZERO_NONCE, key2)) return false;
      // Replay and flood protection: timestamps must grow, and not too fast.
      if (!isAfter(timestamp, hs.latestTimestamp)) return false;
      if (now - hs.lastInitiationReceivedAt < timers.handshakeInitiationRate) return false;
      const h2 = mixHash(afterStatic.h, msg.subarray(88, 116));
      hs.latestTimestamp = timestamp;
      hs.lastInitiationReceivedAt = now;
      hs.stage = 'initiation-received';
      hs.hash = h2;
      hs.chainKey = c2;
      hs.remoteEphemeral = new Uint8Array(ePub);
      hs.remoteIndex = senderIndex;
      return true;
    },
  };
}

/** Responder: message 2. */
export function createResponse(hs: Handshake, localIndex: number, ephemeral = generatePrivateKey()): Buffer | null {
  if (hs.stage !== 'initiation-received') return null;
  const msg = Buffer.alloc(RESPONSE_SIZE);
  msg[0] = MESSAGE_RESPONSE;
  msg.writeUInt32LE(localIndex, 4);
  msg.writeUInt32LE(hs.remoteIndex, 8);

  const ePub = publicKeyOf(ephemeral);
  let c = kdf(1, hs.chainKey, ePub)[0];
  msg.set(ePub, 12);
  let h = mixHash(hs.hash, ePub);
  c = kdf(1, c, dh(ephemeral, hs.remoteEphemeral))[0];
  c = kdf(1, c, dh(ephemeral, hs.remoteStatic))[0];
  const [c2, tau, key] = kdf(3, c, hs.presharedKey);
  h = mixHash(h, tau);
  seal(msg.subarray(44, 60), EMPTY, h, ZERO_NONCE, key);
  h = mixHash(h, msg.subarray(44, 60));

  hs.stage = 'response-sent';
  hs.hash = h;
  hs.chainKey = c2;
  hs.localEphemeral = ephemeral;
  hs.localIndex = localIndex;
  return msg;
}

/** Initiator: check message 2 against the handshake found by its receiver index. */
export function consumeResponse(local: LocalIdentity, hs: Handshake, msg: Uint8Array): boolean {
  if (msg.length !== RESPONSE_SIZE || msg[0] !== MESSAGE_RESPONSE || hs.stage !== 'initiation-sent') return false;
  const view = Buffer.from(msg.buffer, msg.byteOffset, msg.length);
  if (view.readUInt32LE(8) !== hs.localIndex) return false;
  const ePub = msg.subarray(12, 44);
  let c = kdf(1, hs.chainKey, ePub)[0];
  let h = mixHash(hs.hash, ePub);
  try {
    c = kdf(1, c, dh(hs.localEphemeral, ePub))[0];
    c = kdf(1, c, dh(local.privateKey, ePub))[0];
  } catch {
    return false;
  }
  const [c2, tau, key] = kdf(3, c, hs.presharedKey);
  h = mixHash(h, tau);
  if (!open(EMPTY, msg.subarray(44, 60), h, ZERO_NONCE, key)) return false;
  h = mixHash(h, msg.subarray(44, 60));

  hs.stage = 'response-received';
  hs.hash = h;
  hs.chainKey = c2;
  hs.remoteEphemeral = new Uint8Array(ePub);
  hs.remoteIndex = view.readUInt32LE(4);
  return true;
}

/** Transport keys from a completed handshake; clears the handshake state (forward secrecy). */
export function deriveSessionKeys(hs: Handshake): SessionKeys | null {
  const isInitiator = hs.stage === 'response-received';
  if (!isInitiator && hs.stage !== 'response-sent') return null;
  const [first, second] = kdf(2, hs.chainKey, EMPTY);
  const keys: SessionKeys = {
    sendKey: isInitiator ? first : second,
    receiveKey: isInitiator ? second : first,
    localIndex: hs.localIndex,
    remoteIndex: hs.remoteIndex,
    isInitiator,
  };
  hs.clear();
  return keys;
}
