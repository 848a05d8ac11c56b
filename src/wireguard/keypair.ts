import { ReplayWindow } from './replay.js';
import type { SessionKeys } from './noise.js';

/** The transport keys of one completed handshake, with their send counter and replay window. */
export class Keypair {
  readonly sendKey: Buffer;
  readonly receiveKey: Buffer;
  readonly localIndex: number;
  readonly remoteIndex: number;
  readonly isInitiator: boolean;
  sendCounter = 0;
  readonly replay = new ReplayWindow();

  constructor(keys: SessionKeys, readonly createdAt: number) {
    this.sendKey = Buffer.from(keys.sendKey);
    this.receiveKey = Buffer.from(keys.receiveKey);
    this.localIndex = keys.localIndex;
    this.remoteIndex = keys.remoteIndex;
    this.isInitiator = keys.isInitiator;
  }

  /** Keys are wiped from memory when the keypair retires. */
  wipe(): void {
    this.sendKey.fill(0);
    this.receiveKey.fill(0);
  }
}

/**
 * A peer's keypairs: `current` sends; `previous` still receives packets in flight during a
 * rekey; `next` (responder side only) waits for the initiator's first data packet, which
 * confirms the handshake, before it may send.
 */
export class KeypairSlots {
  previous: Keypair | null = null;
  current: Keypair | null = null;
  next: Keypair | null = null;

  /** Installs a new keypair and returns the ones that retire (their indices must be freed). */
  install(kp: Keypair): Keypair[] {
    const retired: Keypair[] = [];
    if (this.previous) retired.push(this.previous);
    this.previous = null;
    if (kp.isInitiator) {
      // The initiator may use its keypair at once; a pending `next` becomes the fallback.
      if (this.next) {
        if (this.current) retired.push(this.current);
        this.previous = this.next;
        this.next = null;
      } else {
        this.previous = this.current;
      }
      this.current = kp;
    } else {
      if (this.next) retired.push(this.next);
      this.next = kp;
    }
    return retired;
  }

  /** The responder saw the first packet under `next`: it becomes current. Returns retirees. */
  confirmNext(): Keypair[] {
    const retired = this.previous ? [this.previous] : [];
    this.previous = this.current;
    this.current = this.next;
    this.next = null;
    return retired;
  }

  all(): Keypair[] {
    return [this.previous, this.current, this.next].filter((k): k is Keypair => k !== null);
  }

  clear(): Keypair[] {
    const all = this.all();
    this.previous = this.current = this.next = null;
    return all;
  }
}
