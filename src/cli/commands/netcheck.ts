import type { CommandModule } from 'yargs';
import { callDaemon, isDaemonAnswering } from '../../daemon/control-client.js';
import { AgentVpnError, isAgentVpnError } from '../../errors.js';
import { netcheckStandalone, type NetcheckReport } from '../../paths/netcheck.js';
import { columns, interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface NetcheckArgs extends GlobalArgs {
  interface: string;
  stun?: string[];
  gateway?: string;
}

/** The daemon's netcheck probes all its STUN servers and the gateway; give it time for retries. */
const DAEMON_NETCHECK_TIMEOUT_MS = 15_000;

export interface NetcheckResult {
  report: NetcheckReport;
  /** Who ran it: the interface's daemon (over its WireGuard socket) or this process. */
  via: 'daemon' | 'standalone';
}

/**
 * Asks the running daemon (its reflexive port is the one peers use); with no daemon, probes
 * the `--stun` servers from a socket of our own.
 */
export async function obtainNetcheck(args: { interface: string; stun?: string[]; gateway?: string }): Promise<NetcheckResult> {
  const stun = (args.stun ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  let daemonUp = false;
  try {
    daemonUp = await isDaemonAnswering(args.interface);
  } catch (e) {
    // A daemon we may not talk to (not root): with --stun we can still check on our own.
    if (stun.length === 0) throw e;
  }
  if (daemonUp) {
    try {
      const report = (await callDaemon(args.interface, 'netcheck', stun.length ? { servers: stun } : {}, { timeoutMs: DAEMON_NETCHECK_TIMEOUT_MS })) as NetcheckReport;
      return { report, via: 'daemon' };
    } catch (e) {
      // An older daemon without the method: fall back when we know whom to ask.
      if (!(isAgentVpnError(e) && e.code === 'UNKNOWN_METHOD' && stun.length > 0)) throw e;
    }
  }
  if (stun.length === 0) {
    throw new AgentVpnError(
      'NETCHECK_NO_SERVERS',
      `no agentvpn daemon for interface ${args.interface}, and no STUN server to ask`,
      'pass --stun HOST:PORT (two ports or two hosts also detect a hard NAT), or start the daemon with `sudo agentvpn up`',
    );
  }
  const gateway = args.gateway === undefined ? undefined : args.gateway === 'none' ? null : args.gateway;
  return { report: await netcheckStandalone({ servers: stun, gateway }), via: 'standalone' };
}

function hardNat(v: boolean | null): string {
  if (v === null) return 'unknown (needs answers from two STUN servers or ports)';
  return v ? 'yes (the mapping varies by destination: direct paths need port mapping or the peer to be reachable)' : 'no';
}

/** Short aligned lines: UDP, reflexive address, hard NAT, port mapping, latency per server. */
export function formatNetcheck(r: NetcheckReport, via?: NetcheckResult['via'], iface?: string): string {
  const rows: string[][] = [
    ['udp:', r.udp ? 'ok' : 'no STUN server answered (UDP blocked, or the servers are down)'],
    ['reflexive:', r.reflexive ?? '-'],
    ['hard nat:', hardNat(r.mappingVariesByDestination)],
    ['port mapping:', r.portMapping ? `${r.portMapping.protocol} ${r.portMapping.external}` : 'none'],
  ];
  const width = Math.max(0, ...r.stunServers.map((s) => s.length));
  r.stunServers.forEach((server, i) => {
    const ms = r.latencyMs[server];
    rows.push([i === 0 ? 'latency:' : '', `${server.padEnd(width)}  ${ms === undefined ? 'no answer' : `${ms.toFixed(2)} ms`}`]);
  });
  if (r.stunServers.length === 0) rows.push(['latency:', '-']);
  // The daemon's view of the relays the registry advertises: which is home, and how near each is.
  const relays = (r as { relays?: { name: string; region: string | null; rttMs: number | null; alive: boolean; home: boolean }[] }).relays ?? [];
  relays.forEach((x, i) => rows.push([i === 0 ? 'relays:' : '',
    `${x.name} (${x.region ?? 'no region'})  ${x.alive && x.rttMs !== null ? `${x.rttMs.toFixed(2)} ms` : 'no answer'}${x.home ? '  home' : ''}`]));
  if (via) rows.push(['checked by:', via === 'daemon' ? `the daemon of ${iface ?? 'the interface'}` : 'this command (no daemon running)']);
  return columns(rows);
}

export const netcheckCommand: CommandModule<GlobalArgs, NetcheckArgs> = {
  command: 'netcheck',
  describe: 'Report UDP reachability, the STUN-reflexive address, hard NAT and port mapping',
  builder: (y) =>
    y.option('interface', interfaceOption)
      .option('stun', { type: 'string', array: true, describe: 'STUN server HOST:PORT (repeatable); required when no daemon runs' })
      .option('gateway', { type: 'string', describe: "gateway to ask for a port mapping without a daemon (default: the default route's; 'none' skips)" }),
  handler: runCommand(async (args) => {
    const { report, via } = await obtainNetcheck(args);
    printResult(args.json, { ...report, via }, () => formatNetcheck(report, via, args.interface));
  }),
};
