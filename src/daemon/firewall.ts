/**
 * The daemon's own packet filter (nftables): the overlay addresses are reachable through the
 * tunnel only. Without it a host on the same LAN that is not a member routes an overlay address
 * via our underlay address and reaches whatever listens there (Linux accepts a packet for any
 * local address on any interface), and packets with overlay sources from the LAN pass for
 * members' traffic.
 *
 * One table per interface, `inet agentvpn_<iface>` (IPv4 and IPv6 in one; several daemons
 * coexist), with one chain on the prerouting hook at raw priority. Prerouting sees every packet
 * that arrives at the host before routing splits it into local delivery (input) and forwarding,
 * so one chain guards both; at raw priority it runs before conntrack, so a flood of spoofed
 * packets costs a lookup and leaves no connection state behind.
 *
 * | # | packet                                        | verdict                                  |
 * |---|-----------------------------------------------|------------------------------------------|
 * | 1 | arrived on the TUN or on lo                   | accept (ends this table only; other      |
 * |   |                                               | tables still see it)                     |
 * | 2 | source inside an overlay prefix               | counter spoofed_source, drop             |
 * | 3 | destination inside an overlay prefix          | counter to_overlay, drop                 |
 *
 * The overlay prefixes are the networks of the interface's own addresses: in fleet mode the IPv4
 * pool and the network's ULA /48, in static mode the prefixes of the Address lines (never the
 * peers' AllowedIPs, which may be 0.0.0.0/0). Local processes reach their own overlay address
 * over lo, members arrive on the TUN; nothing else gets in.
 */
import { execFile, execFileSync } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import type { Logger as PinoLogger } from 'pino';
import { AgentVpnError } from '../errors.js';
import { formatPrefix, networkOf, parseAddress, type Prefix } from '../ip/prefix.js';
import type { FirewallStatus } from './status-types.js';

/** nft answers in milliseconds; a hung one must not hold the daemon's start or shutdown. */
const NFT_TIMEOUT_MS = 10_000;
const COUNTER = { toOverlay: 'to_overlay', spoofedSource: 'spoofed_source' } as const;
const UNSAFE = 'or start with --no-firewall, which leaves the overlay addresses reachable from the LAN without WireGuard (unsafe on shared networks)';

/** Interface names are [A-Za-z0-9_.-]{1,15}, all valid inside an nft identifier after this prefix. */
export function firewallTableName(iface: string): string {
  return `agentvpn_${iface}`;
}

function contains(outer: Prefix, inner: Prefix): boolean {
  return outer.family === inner.family && outer.bits <= inner.bits
    && formatPrefix(networkOf({ ...inner, bits: outer.bits })) === formatPrefix(networkOf(outer));
}

/** The networks of the interface's addresses, each once, leaving out those inside another one. */
export function overlayPrefixes(addresses: Prefix[]): Prefix[] {
  const nets = addresses.map(networkOf);
  const distinct = nets.filter((p, i) => nets.findIndex((q) => formatPrefix(q) === formatPrefix(p)) === i);
  return distinct.filter((p) => !distinct.some((q) => q !== p && contains(q, p)));
}

/**
 * One `nft -f` transaction: it creates the table if absent and deletes it (so a table left by a
 * crashed run goes, whatever it held), then defines it afresh. Either all of it applies or none.
 */
export function firewallScript(iface: string, prefixes: Prefix[]): string {
  const table = `inet ${firewallTableName(iface)}`;
  const set = (family: 4 | 6) => prefixes.filter((p) => p.family === family).map(formatPrefix).join(', ');
  const rules: string[] = [];
  for (const [field, counter] of [['saddr', COUNTER.spoofedSource], ['daddr', COUNTER.toOverlay]] as const) {
    for (const [family, proto] of [[4, 'ip'], [6, 'ip6']] as const) {
      if (set(family)) rules.push(`    ${proto} ${field} { ${set(family)} } counter name "${counter}" drop`);
    }
  }
  return [
    `table ${table}`,
    `delete table ${table}`,
    `table ${table} {`,
    `  counter ${COUNTER.toOverlay} {}`,
    `  counter ${COUNTER.spoofedSource} {}`,
    '  chain prerouting {',
    '    type filter hook prerouting priority raw; policy accept;',
    `    iifname { "${iface}", "lo" } accept`,
    ...rules,
    '  }',
    '}',
    '',
  ].join('\n');
}

/**
 * Refuses overlay prefixes that hold an address of another interface: rule 2 would drop that
 * network's own traffic and could cut the host off its LAN (an Address of 10.0.0.1/8 on a
 * 10.1.0.0/16 LAN, an overlay pool that is also the underlay).
 */
export function checkNoOverlap(iface: string, prefixes: Prefix[], interfaces = networkInterfaces()): void {
  for (const [name, addrs] of Object.entries(interfaces)) {
    if (name === iface) continue;
    for (const a of addrs ?? []) {
      const bytes = parseAddress(a.address.replace(/%.*$/, ''));
      if (!bytes) continue;
      const host: Prefix = { family: bytes.length === 4 ? 4 : 6, addr: bytes, bits: bytes.length * 8 };
      const hit = prefixes.find((p) => contains(p, host));
      if (hit) {
        throw new AgentVpnError('FIREWALL_OVERLAP', `overlay prefix ${formatPrefix(hit)} of ${iface} holds ${a.address}, an address of ${name}`,
          `the firewall would drop ${name}'s own traffic; give ${iface} an address range no other interface uses (a narrower Address prefix), ${UNSAFE}`);
      }
    }
  }
}

/** Runs nft with `args` (and `input` on stdin); resolves with its stdout. */
function nft(args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile('nft', args, { timeout: NFT_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const command = ['nft', ...args].join(' ');
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        return reject(new AgentVpnError('FIREWALL_UNAVAILABLE', `${command}: the nft command is not installed`,
          `install nftables (apt install nftables), ${UNSAFE}`, { cause: err }));
      }
      reject(new AgentVpnError('FIREWALL_FAILED', `${command} failed: ${String(stderr).trim() || err.message}`,
        `the daemon needs root or CAP_NET_ADMIN and a kernel with nf_tables (modprobe nf_tables), ${UNSAFE}`, { cause: err }));
    });
    child.stdin?.on('error', () => {}); // nft may exit before reading everything
    child.stdin?.end(input ?? '');
  });
}

const NO_SUCH_TABLE = /No such file or directory/;

/** Deletes the interface's table; one that is not there is fine. */
async function deleteTable(iface: string): Promise<void> {
  await nft(['delete', 'table', 'inet', firewallTableName(iface)]).catch((e: unknown) => {
    if (!(e instanceof AgentVpnError && e.code === 'FIREWALL_FAILED' && NO_SUCH_TABLE.test(e.message))) throw e;
  });
}

export interface FirewallOptions {
  iface: string;
  /** The interface's own addresses with their prefix lengths. */
  addresses: Prefix[];
  /** False: install nothing (--no-firewall), only remove a table an earlier run left. */
  enabled: boolean;
  log: PinoLogger;
}

/** The nftables table of one interface for as long as the daemon runs; start() and stop(). */
export class Firewall {
  readonly table: string;
  private readonly prefixes: Prefix[];
  private installed = false;
  /** A process that dies by an uncaught error still runs 'exit' listeners: take the table along. */
  private readonly removeOnExit = () => {
    try {
      execFileSync('nft', ['delete', 'table', 'inet', this.table], { stdio: 'ignore', timeout: NFT_TIMEOUT_MS });
    } catch {
      // nothing more can be done while exiting; the next start replaces the table
    }
  };

  constructor(private readonly opts: FirewallOptions) {
    this.table = firewallTableName(opts.iface);
    this.prefixes = overlayPrefixes(opts.addresses);
  }

  async start(): Promise<void> {
    const { iface, log } = this.opts;
    if (!this.opts.enabled) {
      log.warn({ iface }, 'firewall disabled (--no-firewall): hosts on the LAN can reach the overlay addresses without WireGuard');
      await deleteTable(iface).catch(() => {}); // best effort: nft may not even be installed
      return;
    }
    checkNoOverlap(iface, this.prefixes);
    await nft(['-f', '-'], firewallScript(iface, this.prefixes));
    this.installed = true;
    process.on('exit', this.removeOnExit);
    log.info({ table: `inet ${this.table}`, prefixes: this.prefixes.map(formatPrefix) }, 'firewall installed');
  }

  /** Removes the table; idempotent. */
  async stop(): Promise<void> {
    if (!this.installed) return;
    this.installed = false;
    process.off('exit', this.removeOnExit);
    await deleteTable(this.opts.iface);
  }

  /** The table and its drop counters (read from the kernel; null when nft cannot say). */
  async status(): Promise<FirewallStatus> {
    const base = { enabled: this.opts.enabled, table: this.installed ? `inet ${this.table}` : null, prefixes: this.prefixes.map(formatPrefix) };
    if (!this.installed) return { ...base, dropped: null };
    try {
      const out = JSON.parse(await nft(['-j', 'list', 'counters', 'table', 'inet', this.table])) as { nftables?: { counter?: { name: string; packets: number } }[] };
      const packets = (name: string) => out.nftables?.find((o) => o.counter?.name === name)?.counter?.packets ?? 0;
      return { ...base, dropped: { toOverlay: packets(COUNTER.toOverlay), spoofedSource: packets(COUNTER.spoofedSource) } };
    } catch (e) {
      this.opts.log.warn({ err: (e as Error).message }, 'cannot read the firewall counters');
      return { ...base, dropped: null };
    }
  }
}
