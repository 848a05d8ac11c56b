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

/**
 * chooseHome over time: a move to a clearly nearer relay happens only once that relay has been
 * the choice for switchAfterMs without a break; a move away from a home that stopped answering
 * (or the first choice) happens at once.
 */
export class HomeChoice {
  private candidate: string | null = null;
  private candidateSince = 0;

  next(relays: readonly RelayMeasure[], current: string | null, now: number): string | null {
    const choice = chooseHome(relays, current, now);
    const home = relays.find((r) => r.name === current);
    if (choice === current || !home || !isAlive(home, now, true)) {
      this.candidate = null;
      return choice;
    }
    if (choice !== this.candidate) {
      this.candidate = choice;
      this.candidateSince = now;
    }
    return now - this.candidateSince >= C.switchAfterMs ? choice : current;
  }
}

/**
 * Which relays refuse us though they answer STUN: a relay whose link stayed down for
 * downGraceMs is not used as home, and is avoided for avoidAfterDownMs after that unless no
 * other relay answers (else a relay that refuses us would win on RTT again at every retry and
 * make us publish a new record each time). Shorter outages (one refused hello: a relay that
 * follows the registry's members has not seen a new member yet) cost nothing.
 */
export class RelayHealth {
  private readonly downSince = new Map<string, number>();
  private readonly avoidUntil = new Map<string, number>();

  /** Records whether our link to `name` is down now (no link: not down). */
  observe(name: string, linkDown: boolean, now: number): void {
    if (!linkDown) this.downSince.delete(name);
    else if (!this.downSince.has(name)) this.downSince.set(name, now);
    if (now - (this.downSince.get(name) ?? now) >= C.downGraceMs) this.avoidUntil.set(name, now + C.avoidAfterDownMs);
  }

  /**
   * The measures as the choice should see them: relays down past the grace count as silent, and
   * avoided ones too unless that would leave no live relay.
   */
  adjust(measures: readonly RelayMeasure[], home: string | null, now: number): RelayMeasure[] {
    const silent = (m: RelayMeasure): RelayMeasure => ({ ...m, lastAnswerAt: -Infinity });
    const down = (name: string) => now - (this.downSince.get(name) ?? now) >= C.downGraceMs;
    const reachable = measures.map((m) => (down(m.name) ? silent(m) : m));
    const preferred = reachable.map((m) => ((this.avoidUntil.get(m.name) ?? 0) > now ? silent(m) : m));
    return preferred.some((m) => isAlive(m, now, m.name === home)) ? preferred : reachable;
  }
}
