import { relayChoice as C } from './constants.js';

/** What we know of one advertised relay: its smoothed RTT and when it last answered a probe. */
export interface RelayMeasure {
  name: string;
  /** Smoothed round-trip time in ms; null before its first answer. */
  rttMs: number | null;
  /** When it last answered (Date.now() ms); -Infinity: never. */
  lastAnswerAt: number;
}

/**
 * Whether a relay answered recently enough to be used as a home: our home (probed every
 * homeProbeMs) within deadAfterMs, another (probed every otherProbeMs) within as many lost
 * probes' worth of time after its last one.
 */
export function isAlive(m: RelayMeasure, now: number, isHome: boolean): boolean {
  const window = C.deadAfterMs + (isHome ? 0 : C.otherProbeMs - C.homeProbeMs);
  return m.rttMs !== null && now - m.lastAnswerAt <= window;
}

/** Folds a new RTT sample into the smoothed one (an exponentially weighted moving average). */
export function smoothRtt(previous: number | null, sampleMs: number): number {
  return previous === null ? sampleMs : previous + C.rttSampleWeight * (sampleMs - previous);
}

/**
 * The home relay: the nearest relay that answers. The current home stays while it answers unless
 * another is clearly nearer (both `switchFactor` and `switchMarginMs` faster), so RTT noise never
 * makes an agent flap between relays (each move costs a new record and peers re-routing). A home
 * that stopped answering is left for the nearest live one. While none answers (at start, or all
 * down) the current home is kept, or the first one listed is taken, so there is always a guess.
 */
export function chooseHome(relays: readonly RelayMeasure[], current: string | null, now: number): string | null {
  let best: RelayMeasure | null = null;
  for (const r of relays) if (isAlive(r, now, r.name === current) && (best === null || r.rttMs! < best.rttMs!)) best = r;
  const home = relays.find((r) => r.name === current);
  if (home && isAlive(home, now, true)) {
    if (!best || best === home) return home.name;
    const clearlyNearer = best.rttMs! < home.rttMs! * C.switchFactor && home.rttMs! - best.rttMs! >= C.switchMarginMs;
    return clearlyNearer ? best.name : home.name;
  }
  if (best) return best.name;
  return home?.name ?? relays[0]?.name ?? null;
}
