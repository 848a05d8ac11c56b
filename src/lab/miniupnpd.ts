/**
 * A real miniupnpd (Debian package `miniupnpd-nftables`, the nftables build) on a NAT lab router,
 * offering NAT-PMP and PCP (UDP 5351) and UPnP IGD on the site's LAN (either may be off).
 *
 *   const world = await buildNatWorld(lab, { sites: [{ name: 'cafe', kind: 'symmetric', agents: ['carol'] }] });
 *   const upnp = await startMiniupnpd(lab, world.sites.cafe!, { stunServer: world.stun! });
 *   // from carol's namespace: NAT-PMP to upnp.lanIp:5351 (opcode 0 = external address, 1 = map UDP)
 *   await upnp.stop();
 *
 * It runs as `miniupnpd -d -f <conf>` in the router namespace, a process the lab tracks; no system
 * service is involved (the package ships no unit: the `miniupnpd` package with the init scripts
 * is not needed).
 *
 * The nftables chains miniupnpd fills are made here, in the router namespace, after the layout
 * of the package's /etc/miniupnpd/nft_init.sh, in a table of their own (`inet miniupnpd`):
 * - chain `miniupnpd` (filter rules), jumped to from a forward hook chain. Unlike nft_init.sh its
 *   policy is accept: the lab router's own iptables FORWARD filter already drops unsolicited
 *   inbound traffic and lets destination-NATed packets (the mappings) through;
 * - chains `prerouting_miniupnpd` / `postrouting_miniupnpd` (the DNAT of each mapping, and the
 *   SNAT miniupnpd may add), jumped to from NAT hook chains one priority step *before* the
 *   router's iptables NAT chains (dstnat - 1, srcnat - 1), so a mapping wins over MASQUERADE.
 * stop() ends the daemon and deletes the table, which removes every mapping (conntrack entries
 * of flows already going through a mapping live on until they time out, as on a real router).
 *
 * What a mapping does (2.3.1, nftables): a DNAT `wan udp dport EXT → agent:INT` and a filter
 * accept; no SNAT. So any public host reaches agent:INT via public:EXT, and the agent's answers
 * on such a flow leave from public:EXT (conntrack); but a flow the agent *starts* from INT still
 * gets the router's usual mapping (a random port behind `symmetric`), not EXT.
 *

 * The external address. miniupnpd refuses to map ports when its WAN address is private or
 * reserved, and the lab may only use documentation ranges, which it counts as reserved (so
 * `ext_ip=` is rejected too). It is therefore run with `ext_perform_stun=yes` against the lab's
 * RFC 5780 STUN server (`world.stun`): miniupnpd sends four Binding requests (with and without
 * CHANGE-REQUEST for address and port) from four sockets; when all four answers arrive with the
 * ports unchanged, its WAN is unfiltered and un-NATed, so it takes the STUN-reported address as
 * its public one and enables port forwarding. This is also the realistic result for the inner
 * router of a `double` site: the carrier NAT filters, STUN says "restrictive", and miniupnpd
 * refuses mappings (NAT-PMP result 3, network failure) while still reporting the carrier's address
 * as external, like a real home router behind CGNAT. The STUN check takes ~0.1 s on an open WAN
 * and ~9 s (three 3 s rounds) on a filtered one.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Lab, LabProcess } from './netns.js';
import type { NatSite } from './nat.js';
import { waitFor, WaitAborted } from './proc.js';

export const NATPMP_PORT = 5351;

export interface MiniupnpdOptions {
  /** The public STUN server miniupnpd learns its external address from (world.stun). */
  stunServer: { ip: string; port: number };
  /** Offer UPnP IGD (SSDP + HTTP on `upnpHttpPort`). Default true. */
  upnp?: boolean;
  /**
   * Offer NAT-PMP and PCP (UDP 5351). Default true. This build (2.3.1) has one switch for both,
   * `enable_natpmp`; with it off and `upnp` on, the router speaks UPnP-IGD only.
   */
  natpmp?: boolean;
  /** TCP port of the UPnP HTTP server. Default 5000. */
  upnpHttpPort?: number;
  /** miniupnpd permission rules ("allow|deny ext-ports ip/mask int-ports"). Default: the LAN, ports 1024-65535. */
  permissions?: string[];
  /** Extra `key=value` lines for the config file. */
  extraConfig?: string[];
  /** How long to wait for the daemon to come up. Default 20 s (its STUN check can take ~3 s a round). */
  startTimeoutMs?: number;
}

export interface MiniupnpdHandle {
  proc: LabProcess;
  /** The router namespace it runs in (the agents' gateway). */
  ns: string;
  /** Where NAT-PMP/PCP (UDP 5351) and UPnP listen: the router's LAN address. */
  lanIp: string;
  /** null when NAT-PMP/PCP are off. */
  natpmpPort: number | null;
  upnpHttpPort: number | null;
  /** The external address miniupnpd reports, null when it decided port forwarding is impossible. */
  externalIp: string | null;
  /** True when its STUN check found the WAN unfiltered (mappings will work). */
  portForwarding: boolean;
  confPath: string;
  /** The current `inet miniupnpd` table (its chains hold the mappings). */
  rules(): Promise<string>;
  /** The daemon's log so far. */
  log(): string;
  /** Stops the daemon and removes its nftables table. */
  stop(): Promise<void>;
}

const TABLE = 'miniupnpd';

function nftSetup(): string {
  return `table inet ${TABLE} {
  chain miniupnpd {
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    jump miniupnpd
  }
  chain prerouting {
    type nat hook prerouting priority dstnat - 1; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority srcnat - 1; policy accept;
    jump postrouting_miniupnpd
  }
}
`;
}

/** Starts miniupnpd on the router the site's agents use as gateway (`site.routers[0]`). */
export async function startMiniupnpd(lab: Lab, site: NatSite, opts: MiniupnpdOptions): Promise<MiniupnpdHandle> {
  const router = site.routers[0];
  if (!router) throw new Error(`site ${site.name} (${site.kind}) has no router for miniupnpd`);
  const ns = router.ns;
  const tag = `${site.name}-miniupnpd`;
  const confPath = join(lab.dir, `${tag}.conf`);
  const upnp = opts.upnp ?? true;
  const natpmp = opts.natpmp ?? true;
  if (!upnp && !natpmp) throw new Error('miniupnpd with neither UPnP nor NAT-PMP/PCP would offer nothing');
  const httpPort = opts.upnpHttpPort ?? 5000;
  const permissions = opts.permissions ?? [`allow 1024-65535 ${router.lanCidr} 1024-65535`, 'deny 0-65535 0.0.0.0/0 0-65535'];
  const conf = [
    `ext_ifname=${router.wanIf}`,
    `listening_ip=${router.lanIf}`,
    'ipv6_disable=yes',
    `port=${httpPort}`,
    `enable_natpmp=${natpmp ? 'yes' : 'no'}`,
    `enable_upnp=${upnp ? 'yes' : 'no'}`,
    'secure_mode=yes',
    'system_uptime=no',
    'notify_interval=60',
    'clean_ruleset_interval=0',
    `uuid=${randomUUID()}`,
    `lease_file=${join(lab.dir, `${tag}.leases`)}`,
    'ext_perform_stun=yes',
    `ext_stun_host=${opts.stunServer.ip}`,
    `ext_stun_port=${opts.stunServer.port}`,
    `upnp_table_name=${TABLE}`,
    `upnp_nat_table_name=${TABLE}`,
    'upnp_forward_chain=miniupnpd',
    'upnp_nat_chain=prerouting_miniupnpd',
    'upnp_nat_postrouting_chain=postrouting_miniupnpd',
    ...(opts.extraConfig ?? []),
    ...permissions,
    '',
  ].join('\n');
  writeFileSync(confPath, conf, { mode: 0o600 });

  await lab.run(ns, ['nft', '-f', '-'], { input: nftSetup() });
  // The router drops unsolicited UDP to itself (nat.ts); miniupnpd's STUN check needs the answers
  // its CHANGE-REQUESTs ask for from the server's other address and port, so let STUN replies in.
  await lab.iptables(ns, ['-I', 'INPUT', '1', '-i', router.wanIf, '-p', 'udp', '--sport', `${opts.stunServer.port}:${opts.stunServer.port + 1}`, '-j', 'ACCEPT']);
  const proc = lab.spawn(ns, ['miniupnpd', '-d', '-f', confPath, '-P', join(lab.dir, `${tag}.pid`)], { name: 'miniupnpd' });
  let exited = false;
  void proc.exited.then(() => (exited = true));
  const readLog = (): string => {
    try {
      return readFileSync(proc.logFile, 'utf8');
    } catch {
      return '';
    }
  };
  try {
    await waitFor(
      () => {
        if (exited) throw new WaitAborted(`miniupnpd exited:\n${lab.logTail(proc)}`);
        // Both lines come after its STUN check, so port forwarding is decided by then.
        return readLog().includes(natpmp ? 'Listening for NAT-PMP/PCP traffic' : 'HTTP listening on port');
      },
      { timeoutMs: opts.startTimeoutMs ?? 20_000, intervalMs: 50, what: `miniupnpd in ${ns}` },
    );
  } catch (e) {
    await lab.kill(proc);
    await lab.exec(ns, ['nft', 'delete', 'table', 'inet', TABLE]);
    throw e;
  }
  const log = readLog();
  const portForwarding = /Port forwarding is now enabled/.test(log) && !/Port forwarding is now disabled/.test(log);
  const ext = /with public IP address (\d+\.\d+\.\d+\.\d+)/.exec(log) ?? /has now public IP address (\d+\.\d+\.\d+\.\d+)/.exec(log);

  let stopped = false;
  return {
    proc,
    ns,
    lanIp: router.lanIp,
    natpmpPort: natpmp ? NATPMP_PORT : null,
    upnpHttpPort: upnp ? httpPort : null,
    externalIp: portForwarding ? (ext?.[1] ?? null) : null,
    portForwarding,
    confPath,
    rules: async () => (await lab.run(ns, ['nft', 'list', 'table', 'inet', TABLE])).stdout,
    log: readLog,
    async stop() {
      if (stopped) return;
      stopped = true;
      await lab.kill(proc);
      await lab.exec(ns, ['nft', 'delete', 'table', 'inet', TABLE]);
    },
  };
}
