import { REPLAY_WINDOW_BITS } from './constants.js';

/**
 * Sliding replay window over message counters (RFC 6479 style): a ring of 32-bit words.
 * Counters further than the window behind the highest seen are rejected, as are repeats.
 * Only call `accept` after the packet authenticated, or a forged counter could move the window.
 */
export class ReplayWindow {
  private readonly bits: Uint32Array;
  private readonly words: number;
  private readonly usable: number;
  private highest = -1;

  /** `size` in bits, a multiple of 32 (WireGuard sessions use REPLAY_WINDOW_BITS). */
  constructor(size = REPLAY_WINDOW_BITS) {
    this.words = size / 32;
    this.usable = size - 32;
    this.bits = new Uint32Array(this.words);
  }

  /** True when `counter` is new (and marks it seen). */
  accept(counter: number): boolean {
    if (counter > this.highest) {
      const oldWord = this.highest < 0 ? -1 : Math.floor(this.highest / 32);
      const newWord = Math.floor(counter / 32);
      const clear = Math.min(newWord - oldWord, this.words);
      for (let i = 1; i <= clear; i++) this.bits[(oldWord + i) % this.words] = 0;
      this.highest = counter;
    } else if (this.highest - counter >= this.usable) {
      return false;
    }
    const word = Math.floor(counter / 32) % this.words;
    const bit = 1 << (counter % 32);
    if (this.bits[word] & bit) return false;
    this.bits[word] |= bit;
    return true;
  }

  /** Whether a counter could be new, without marking it: a cheap check before decrypting. */
  mayAccept(counter: number): boolean {
    if (counter > this.highest) return true;
    if (this.highest - counter >= this.usable) return false;
    return (this.bits[Math.floor(counter / 32) % this.words] & (1 << (counter % 32))) === 0;
  }
}
