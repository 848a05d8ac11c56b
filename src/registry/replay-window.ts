import { MAX_CLOCK_SKEW_MS } from './protocol.js';

/**
 * Use-once for an agent's signed requests (join, heartbeat, leave, reads, event streams).
 *
 * Every signed request carries a millisecond timestamp that the agent never signs twice (its
 * client makes each one larger than the one before, whatever the request). The registry takes
 * each timestamp once. It cannot demand "newer than the last": an agent's requests run
 * concurrently (heartbeat, publish, a list, the event stream) and may arrive out of order.
 * So it remembers the most recent timestamps it took, and a floor below which everything is
 * refused:
 *
 *   - a timestamp at or under the floor, or among the used ones, is a replay;
 *   - the used list keeps the newest WINDOW_SLOTS; the oldest one that falls out raises the floor;
 *   - used timestamps older than the clock-skew limit fall out too (they are refused as too old
 *     anyway), so an agent's state is small and bounded whatever it sends.
 *
 * The window is pure data, so every store can keep it in the same transaction as the request's
 * effect (sqlite-store.ts; a PostgreSQL store the same way, with the row locked).
 */
export interface ReplayWindow {
  /** Timestamps at or under this are refused. */
  floor: number;
  /** Timestamps taken above the floor, ascending. */
  used: number[];
}

/**
 * How many recent timestamps an agent's window keeps. An honest agent has a handful of requests
 * in flight at once; 64 lets that many newer ones overtake a slow one before it is refused.
 */
export const WINDOW_SLOTS = 64;

export const EMPTY_WINDOW: ReplayWindow = { floor: -1, used: [] };

/** Whether `timestamp` was already taken (or is too old for the window to tell). */
export function isReplayed(w: ReplayWindow, timestamp: number): boolean {
  return timestamp <= w.floor || w.used.includes(timestamp);
}

/** The window after taking `timestamp` (call isReplayed first); `now` lets old entries fall out. */
export function takeTimestamp(w: ReplayWindow, timestamp: number, now: number): ReplayWindow {
  let floor = w.floor;
  const used = [...w.used];
  let i = used.length;
  while (i > 0 && used[i - 1] > timestamp) i--;
  used.splice(i, 0, timestamp);
  const tooOld = now - MAX_CLOCK_SKEW_MS;
  while (used.length > WINDOW_SLOTS || (used.length > 0 && used[0] < tooOld)) floor = Math.max(floor, used.shift()!);
  return { floor, used };
}
