import { REPLAY_WINDOW_BITS } from './constants.js';

/**
 * Sliding replay window over message counters (RFC 6479 style): a ring of 32-bit words.
 * Counters further than the window behind the highest seen are rejected, as are repeats.
 * Only call `accept` after the packet authenticated, or a forged counter could move the window.
 */
const WORDS = REPLAY_WINDOW_BITS / 32;
const USABLE = REPLAY_WINDOW_BITS - 32;

export class ReplayWindow {
  private readonly bits = new Uint32Array(WORDS);
  private highest = -1;

  /** True when `counter` is new (and marks it seen). */
  accept(counter: number): boolean {
    if (counter > this.highest) {
      const oldWord = this.highest < 0 ? -1 : Math.floor(this.highest / 32);
      const newWord = Math.floor(counter / 32);
      const clear = Math.min(newWord - oldWord, WORDS);
      for (let i = 1; i <= clear; i++) this.bits[(oldWord + i) % WORDS] = 0;
      this.highest = counter;
    } else if (this.highest - counter >= USABLE) {
      return false;
    }
    const word = Math.floor(counter / 32) % WORDS;
    const bit = 1 << (counter % 32);
    if (this.bits[word] & bit) return false;
    this.bits[word] |= bit;
    return true;
  }

  /** Whether a counter could be new, without marking it: a cheap check before decrypting. */
  mayAccept(counter: number): boolean {
    if (counter > this.highest) return true;
    if (this.highest - counter >= USABLE) return false;
    return (this.bits[Math.floor(counter / 32) % WORDS] & (1 << (counter % 32))) === 0;
  }
}
