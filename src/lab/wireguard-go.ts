/**
 * wireguard-go as a real WireGuard peer inside a lab namespace: the reference implementation
 * agentvpn must interoperate with.
 *
 * wireguard-go puts its control socket at /var/run/wireguard/<ifname>.sock, which is shared by
 * every namespace. So it runs in a private mount namespace with its own tmpfs there, and `wg`
 * reaches it with `nsenter --mount --net` into that process: two peers may both be called wg0,
 * and nothing collides with other labs running at the same time.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WaitAborted, runCommand, waitFor, type CommandResult } from './proc.js';
import type { Lab, LabProcess } from './netns.js';
import { DEFAULT_WG_MTU, type WgInterfaceConfig } from './wg-config.js';

const WG_SOCKET_DIR = '/run/wireguard';

export interface WireguardGoOptions {
  /** Add a route via the interface for every peer allowed IP (default true). */
  routes?: boolean;
  /** Time allowed for the interface to appear (default 15 s). */
  timeoutMs?: number;
  /** The wireguard-go binary (default: `wireguard-go` from PATH), e.g. trixie's from scripts/fetch-trixie.sh. */
  binary?: string;
}

export class WireguardGo {
  constructor(
    private readonly lab: Lab,
    readonly ns: string,
    readonly ifname: string,
    readonly process: LabProcess,
  ) {}

  get pid(): number {
    return this.process.pid!;
  }

  /** Runs `wg <args>` against this wireguard-go (inside its mount and network namespaces). */
  wg(args: string[], opts: { check?: boolean } = {}): Promise<CommandResult> {
    return runCommand(['nsenter', '-t', String(this.pid), '-m', '-n', 'wg', ...args], { check: opts.check ?? true });
  }

  async show(): Promise<string> {
    return (await this.wg(['show', this.ifname])).stdout;
  }

  /** Unix time (s) of the latest handshake per peer public key; 0 = never. */
  async latestHandshakes(): Promise<Map<string, number>> {
    const out = (await this.wg(['show', this.ifname, 'latest-handshakes'])).stdout;
    const m = new Map<string, number>();
    for (const line of out.split('\n')) {
      const [key, t] = line.trim().split(/\s+/);
      if (key && t !== undefined) m.set(key, Number(t));
    }
    return m;
  }

  /** Stops the process (by PID) and removes the interface if it is still there. */
  async stop(): Promise<void> {
    await this.lab.kill(this.process);
    await runCommand(['ip', '-n', this.ns, 'link', 'del', this.ifname]); // normally gone with the process
  }
}

/**
 * Starts `wireguard-go -f <ifname>` in ns and configures it like `wg setconf` + wg-quick:
 * keys and peers with `wg set`, addresses, `mtu 1420 up`, routes for the allowed IPs.
 */
export async function startWireguardGo(
  lab: Lab,
  ns: string,
  cfg: WgInterfaceConfig,
  ifname = 'wg0',
  opts: WireguardGoOptions = {},
): Promise<WireguardGo> {
  lab.claimInterface(ns, ifname);
  mkdirSync(WG_SOCKET_DIR, { recursive: true, mode: 0o755 }); // mount point for the private tmpfs
  const script = `mount -t tmpfs -o mode=0700 avlab-wg ${WG_SOCKET_DIR} && exec "$2" -f "$1"`;
  const binary = opts.binary ?? 'wireguard-go';
  const proc = lab.spawn(ns, ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', ifname, binary], {
    name: `wireguard-go-${ifname}`,
    env: { ...process.env, WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: process.env.LOG_LEVEL ?? 'error' },
  });
  const wgp = new WireguardGo(lab, ns, ifname, proc);
  try {
    let exited = false;
    void proc.exited.then(() => (exited = true));
    await waitFor(
      async () => {
        if (exited) throw new WaitAborted(`wireguard-go exited early:\n${lab.logTail(proc)}`);
        return (await wgp.wg(['show', ifname], { check: false })).code === 0;
      },
      { timeoutMs: opts.timeoutMs ?? 15_000, what: `wireguard-go ${ifname} in ${ns}` },
    );
    await configureWireguardGo(lab, wgp, cfg, opts);
  } catch (e) {
    await wgp.stop().catch(() => {});
    throw e;
  }
  return wgp;
}

async function configureWireguardGo(lab: Lab, wgp: WireguardGo, cfg: WgInterfaceConfig, opts: WireguardGoOptions): Promise<void> {
  const { ns, ifname } = wgp;
  const secret = (name: string, value: string): string => {
    const file = join(lab.dir, `${ns}-${ifname}-${name}`);
    writeFileSync(file, `${value}\n`, { mode: 0o600 });
    return file;
  };
  const args = ['set', ifname, 'private-key', secret('private.key', cfg.privateKey)];
  if (cfg.listenPort !== undefined) args.push('listen-port', String(cfg.listenPort));
  cfg.peers.forEach((p, i) => {
    args.push('peer', p.publicKey);
    if (p.presharedKey) args.push('preshared-key', secret(`psk${i}.key`, p.presharedKey));
    args.push('allowed-ips', p.allowedIps.join(','));
    if (p.endpoint) args.push('endpoint', p.endpoint);
    if (p.persistentKeepalive) args.push('persistent-keepalive', String(p.persistentKeepalive));
  });
  await wgp.wg(args);
  for (const cidr of cfg.addresses) await lab.addAddress(ns, ifname, cidr);
  await lab.ip(ns, ['link', 'set', ifname, 'mtu', String(cfg.mtu ?? DEFAULT_WG_MTU), 'up']);
  if (opts.routes ?? true) {
    for (const p of cfg.peers) for (const cidr of p.allowedIps) await lab.addRoute(ns, cidr, undefined, ifname);
  }
}
