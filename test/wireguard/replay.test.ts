import { describe, it, expect } from 'vitest';
import { ReplayWindow } from '../../src/wireguard/replay.js';
import { REPLAY_WINDOW_BITS } from '../../src/wireguard/constants.js';

describe('ReplayWindow', () => {
  it('accepts each counter once, in any order within the window', () => {
    const w = new ReplayWindow();
    const order = [0, 5, 3, 4, 1, 2, 100, 50, 99];
    for (const c of order) expect(w.accept(c)).toBe(true);
    for (const c of order) expect(w.accept(c)).toBe(false);
  });

  it('keeps at least 2048 counters of history and rejects older ones', () => {
    const w = new ReplayWindow();
    const top = 100_000;
    expect(w.accept(top)).toBe(true);
    expect(w.accept(top - 2048)).toBe(true);
    expect(w.accept(top - (REPLAY_WINDOW_BITS - 33))).toBe(true);
    expect(w.accept(top - REPLAY_WINDOW_BITS)).toBe(false);
    expect(w.accept(top - REPLAY_WINDOW_BITS - 5000)).toBe(false);
  });

  it('forgets old bits when the window jumps far ahead', () => {
    const w = new ReplayWindow();
    for (let c = 0; c < 64; c++) w.accept(c);
    expect(w.accept(REPLAY_WINDOW_BITS * 3 + 7)).toBe(true);
    // Counters that map to the same ring slots as the old ones are fresh now.
    expect(w.accept(REPLAY_WINDOW_BITS * 3 + 7 - 100)).toBe(true);
    expect(w.mayAccept(REPLAY_WINDOW_BITS * 3 + 7)).toBe(false);
  });

  it('tracks a long in-order run with random reordering exactly', () => {
    const w = new ReplayWindow();
    const seen = new Set<number>();
    let base = 0;
    for (let i = 0; i < 20_000; i++) {
      const c = base + Math.floor(Math.random() * 64);
      base += 1;
      expect(w.accept(c)).toBe(!seen.has(c));
      seen.add(c);
    }
  });
});
