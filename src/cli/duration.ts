import { AgentVpnError } from '../errors.js';

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "90s", "30m", "24h", "7d" → milliseconds; `flag` names the option in the error. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d{1,6})([smhd])$/.exec(text);
  if (!m || Number(m[1]) === 0) {
    throw new AgentVpnError('BAD_DURATION', `invalid ${flag} "${text}"`, 'give a duration like 90s, 30m, 24h or 7d');
  }
  return Number(m[1]) * UNITS[m[2]];
}
