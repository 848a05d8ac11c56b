/**
 * Ping with per-packet RTTs: loss and the RTT distribution (median, p90) of a ping series, which
 * is what a flood does to a tunnel. measure.ts's `ping` gives only ping's min/avg/max summary.
 */
import type { Lab } from './netns.js';

export interface PingStats {
  sent: number;
  received: number;
  lossPct: number;
  /** RTT figures over the replies; null when nothing came back. */
  medianMs: number | null;
  p90Ms: number | null;
  maxMs: number | null;
}

function quantile(sorted: number[], q: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** `ping -c count -i interval -W timeout dst` from ns, one RTT per reply line. */
export async function pingStats(
  lab: Lab, ns: string, dst: string, opts: { count?: number; intervalSec?: number; timeoutSec?: number } = {},
): Promise<PingStats> {
  const count = opts.count ?? 200;
  const interval = opts.intervalSec ?? 0.01;
  const timeout = opts.timeoutSec ?? 1;
  const argv = ['ping', '-n', '-c', String(count), '-i', String(interval), '-W', String(timeout), dst];
  const r = await lab.exec(ns, argv, { timeoutMs: (count * interval + timeout + 30) * 1000 });
  const summary = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(r.stdout);
  if (!summary) throw new Error(`ping ${dst} from ${ns} failed: ${r.stderr.trim() || r.stdout.trim().slice(-500)}`);
  const rtts = [...r.stdout.matchAll(/icmp_seq=\d+ .*time=([\d.]+) ms(?! \(DUP)/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
  const sent = Number(summary[1]);
  const received = Number(summary[2]);
  return {
    sent, received, lossPct: sent > 0 ? (100 * (sent - received)) / sent : 100,
    medianMs: quantile(rtts, 0.5), p90Ms: quantile(rtts, 0.9), maxMs: rtts.length ? rtts[rtts.length - 1]! : null,
  };
}

/** "12.0 % loss, RTT median 0.61 ms, p90 1.20 ms" */
export function formatPingStats(p: PingStats): string {
  const ms = (v: number | null) => (v === null ? '–' : `${v.toFixed(2)} ms`);
  return `${p.lossPct.toFixed(1)} % loss (${p.sent - p.received}/${p.sent}), RTT median ${ms(p.medianMs)}, p90 ${ms(p.p90Ms)}, max ${ms(p.maxMs)}`;
}
