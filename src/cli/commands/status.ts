import type { CommandModule } from 'yargs';
import { callDaemon } from '../../daemon/control-client.js';
import type { DeviceStatus, FirewallStatus, PeerStatus } from '../../daemon/status-types.js';
import { bold, columns, formatAgo, formatBytes, formatDuration, interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface StatusArgs extends GlobalArgs {
  interface: string;
}

export const statusCommand: CommandModule<GlobalArgs, StatusArgs> = {
  command: 'status',
  describe: 'Show the interface and its peers (like `wg show`)',
  builder: (y) => y.option('interface', interfaceOption),
  handler: runCommand(async (args) => {
    const status = (await callDaemon(args.interface, 'status')) as DeviceStatus;
    printResult(args.json, { ...status }, () => formatStatus(status));
  }),
};

/** "no-route 3, replay 1"; empty when nothing was dropped. */
function formatDropped(dropped: Record<string, number> | undefined): string {
  return Object.entries(dropped ?? {}).filter(([, n]) => n > 0).map(([why, n]) => `${why} ${n}`).join(', ');
}

/** "nftables table inet agentvpn_agentvpn0, 12 packets dropped (to overlay 10, spoofed source 2)". */
function formatFirewall(f: FirewallStatus | undefined): string {
  if (!f) return '';
  if (!f.enabled) return 'off (--no-firewall): hosts on the LAN can reach the overlay addresses without WireGuard';
  if (!f.table) return 'not installed';
  const d = f.dropped;
  const counts = d ? `${d.toOverlay + d.spoofedSource} packets dropped (to overlay ${d.toOverlay}, spoofed source ${d.spoofedSource})` : 'drop counters unreadable';
  return `nftables table ${f.table}, ${counts}`;
}

/** "in force, 12 flows tracked, 3 refusals answered (0 shed)"; empty without a policy filter. */
function formatPolicy(p: Record<string, number | boolean> | undefined): string {
  if (!p) return '';
  if (!p.enforcing) return 'none (every peer may reach every port)';
  return `in force, ${p.flows} flows tracked, ${p.rejectsSent} refusals answered (${p.rejectsShed} shed)`;
}

/** `label: value` lines with the values aligned, skipping empty values. */
function block(title: string, rows: Array<[string, string]>): string {
  return `${title}\n${columns(rows.filter(([, v]) => v !== '').map(([k, v]) => [`${k}:`, v]), '  ')}`;
}

function formatPeer(p: PeerStatus, now: number): string {
  return block(`${bold('peer:')} ${p.publicKey}`, [
    ['endpoint', p.path ? '' : p.endpoint ?? '(none)'],
    ['path', p.path ? `${p.path.kind === 'direct' ? 'direct' : 'relayed via'} ${p.path.endpoint}${p.path.rttMs === null ? '' : `, rtt ${p.path.rttMs} ms`}` : ''],
    ['allowed ips', p.allowedIps.length ? p.allowedIps.join(', ') : '(none)'],
    ['latest handshake', p.latestHandshake === null ? 'never' : formatAgo(p.latestHandshake, now)],
    ['transfer', `${formatBytes(p.rxBytes)} received, ${formatBytes(p.txBytes)} sent`],
    ['persistent keepalive', p.persistentKeepalive ? `every ${formatDuration(p.persistentKeepalive * 1000)}` : ''],
    ['dropped', formatDropped(p.dropped)],
    ['policy denied', formatDropped(p.policyDenies)],
  ]);
}

/** Human status, laid out like `wg show`: the interface block, then one block per peer. */
export function formatStatus(s: DeviceStatus, now = Date.now()): string {
  const device = block(`${bold('interface:')} ${s.interface}`, [
    ['public key', s.publicKey],
    ['listen port', String(s.listenPort)],
    ['addresses', s.addresses.join(', ') || '(none)'],
    ['mtu', String(s.mtu)],
    ['daemon', `pid ${s.pid}, up ${formatDuration(now - s.startedAt)}`],
    ['dropped', formatDropped(s.dropped)],
    ['firewall', formatFirewall(s.firewall)],
    ['policy', formatPolicy(s.policy)],
    ['disco dropped', formatDropped(s.pathStats && { shed: s.pathStats.discoShed, replayed: s.pathStats.discoReplayed, rejected: s.pathStats.discoRejected })],
  ]);
  const alerts = (s.alerts ?? []).map((a) => `${bold('alert:')} ${a}`);
  return [...(alerts.length ? [alerts.join('\n')] : []), device, ...s.peers.map((p) => formatPeer(p, now))].join('\n\n');
}
