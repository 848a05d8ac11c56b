import { describe, expect, it } from 'vitest';
import { MAX_CLOCK_SKEW_MS } from '../../src/registry/protocol.js';
import { EMPTY_WINDOW, WINDOW_SLOTS, isReplayed, takeTimestamp, type ReplayWindow } from '../../src/registry/replay-window.js';
import { jsonDepth } from '../../src/registry/http-body.js';

const now = 10_000_000;

function takeAll(stamps: number[], w: ReplayWindow = EMPTY_WINDOW): { w: ReplayWindow; refused: number[] } {
  const refused: number[] = [];
  for (const t of stamps) {
    if (isReplayed(w, t)) refused.push(t);
    else w = takeTimestamp(w, t, now);
  }
  return { w, refused };
}

describe('replay window', () => {
  it('takes each timestamp once, in any order', () => {
    const { w, refused } = takeAll([now - 5, now - 9, now - 1, now - 7, now - 9, now - 1]);
    expect(refused).toEqual([now - 9, now - 1]);
    expect(w.used).toEqual([now - 9, now - 7, now - 5, now - 1]);
  });

  it('keeps the newest WINDOW_SLOTS: one that falls out raises the floor, so it stays refused', () => {
    const stamps = Array.from({ length: WINDOW_SLOTS + 10 }, (_, i) => now - 1000 + i);
    const { w } = takeAll(stamps);
    expect(w.used.length).toBe(WINDOW_SLOTS);
    expect(w.floor).toBe(stamps[9]);
    for (const t of stamps) expect(isReplayed(w, t)).toBe(true);
    // A slow request older than every kept one is refused; a new one is taken.
    expect(isReplayed(w, stamps[5])).toBe(true);
    expect(isReplayed(w, now + 1)).toBe(false);
  });

  it('drops timestamps past the clock-skew limit (they are refused as too old anyway)', () => {
    const old = now - MAX_CLOCK_SKEW_MS - 1;
    let w = takeTimestamp(EMPTY_WINDOW, old, old);
    w = takeTimestamp(w, now, now);
    expect(w.used).toEqual([now]);
    expect(isReplayed(w, old)).toBe(true);
  });
});

describe('JSON depth scan', () => {
  const depth = (text: string) => jsonDepth(Buffer.from(text), 100);
  it('counts arrays and objects, not brackets inside strings', () => {
    expect(depth('{"a":1}')).toBe(1);
    expect(depth('{"record":{"endpoints":["x"]}}')).toBe(3);
    expect(depth('{"a":"[[[{{{"}')).toBe(1);
    expect(depth('{"a":"\\"[[[","b":[[]]}')).toBe(3);
    expect(depth('12')).toBe(0);
  });
  it('stops as soon as the limit is passed', () => {
    expect(jsonDepth(Buffer.from('['.repeat(50_000)), 8)).toBe(9);
  });
});
