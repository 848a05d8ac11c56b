/**
 * `agentvpn wg-userspace` in a lab namespace, driven by the real wg(8) as wireguard-go is.
 *
 * wg(8) looks for /var/run/wireguard/<iface>.sock, shared by every namespace on the host. So the
 * daemon gets a UAPI directory of its own in the lab dir (AGENTVPN_WG_RUN_DIR), and each wg(8)
 * call binds that directory over /run/wireguard inside the private mount namespace that
 * `ip netns exec` gives every command: labs running at the same time never see each other.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AGENTVPN_BIN, REPO_ROOT } from './agentvpn.js';
import { WaitAborted, runCommand, waitFor, type CommandResult } from './proc.js';
import type { Lab, LabProcess } from './netns.js';
import type { WgInterfaceConfig } from './wg-config.js';

const WG_SOCKET_DIR = '/run/wireguard';

/** argv that runs `argv` in ns with `uapiDir` seen as /run/wireguard (where wg(8) and wg-quick look). */
export function withUapiDir(ns: string, uapiDir: string, argv: readonly string[]): string[] {
  mkdirSync(WG_SOCKET_DIR, { recursive: true, mode: 0o755 }); // the mount point
  return ['ip', 'netns', 'exec', ns, 'sh', '-c', `mount --bind "$0" ${WG_SOCKET_DIR} && exec "$@"`, uapiDir, ...argv];
}

/** Runs wg(8) in ns against the UAPI sockets in uapiDir. */
export function wgAt(ns: string, uapiDir: string, args: string[], opts: { check?: boolean; stdin?: string } = {}): Promise<CommandResult> {
  return runCommand(withUapiDir(ns, uapiDir, ['wg', ...args]), { check: opts.check ?? true, input: opts.stdin });
}

export class WgUserspace {
  constructor(
    private readonly lab: Lab,
    readonly ns: string,
    readonly ifname: string,
    /** AGENTVPN_WG_RUN_DIR: where its UAPI socket is. */
    readonly uapiDir: string,
    /** AGENTVPN_RUN_DIR: its control socket, for `agentvpn status`. */
    readonly runDir: string,
    readonly process: LabProcess,
  ) {}

  get pid(): number {
    return this.process.pid!;
  }

  get socketPath(): string {
    return join(this.uapiDir, `${this.ifname}.sock`);
  }

  wg(args: string[], opts: { check?: boolean } = {}): Promise<CommandResult> {
    return wgAt(this.ns, this.uapiDir, args, opts);
  }

  /** `agentvpn <args>` against this process's control socket. */
  cli(args: string[]): Promise<CommandResult> {
    return this.lab.exec(this.ns, [process.execPath, AGENTVPN_BIN, ...args], { env: { ...process.env, AGENTVPN_RUN_DIR: this.runDir } });
  }

  /**
   * What wg-quick does after starting the implementation: `wg set` keys and peers, then the
   * addresses, MTU, link up and a route per allowed IP. `ns` is where the interface is now.
   */
  async configure(cfg: WgInterfaceConfig, ns = this.ns): Promise<void> {
    const keyFile = join(this.lab.dir, `${this.ns}-${this.ifname}-wgu.key`);
    writeFileSync(keyFile, `${cfg.privateKey}\n`, { mode: 0o600 });
    const args = ['set', this.ifname, 'private-key', keyFile];
    if (cfg.listenPort !== undefined) args.push('listen-port', String(cfg.listenPort));
    cfg.peers.forEach((p, i) => {
      args.push('peer', p.publicKey, 'allowed-ips', p.allowedIps.join(','));
      if (p.presharedKey) {
        const pskFile = join(this.lab.dir, `${this.ns}-${this.ifname}-wgu-psk${i}.key`);
        writeFileSync(pskFile, `${p.presharedKey}\n`, { mode: 0o600 });
        args.push('preshared-key', pskFile);
      }
      if (p.endpoint) args.push('endpoint', p.endpoint);
      if (p.persistentKeepalive) args.push('persistent-keepalive', String(p.persistentKeepalive));
    });
    await this.wg(args);
    for (const a of cfg.addresses) await this.lab.run(ns, ['ip', 'addr', 'add', a, 'dev', this.ifname]);
    await this.lab.run(ns, ['ip', 'link', 'set', 'dev', this.ifname, 'mtu', String(cfg.mtu ?? 1420), 'up']);
    for (const p of cfg.peers) for (const ip of p.allowedIps) await this.lab.run(ns, ['ip', 'route', 'replace', ip, 'dev', this.ifname]);
  }

  async stop(): Promise<void> {
    await this.lab.kill(this.process);
  }
}

/** Starts `agentvpn wg-userspace -f IFACE` in ns and waits until wg(8) reaches it. */
export async function startWgUserspace(lab: Lab, ns: string, ifname = 'agentvpn0', opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<WgUserspace> {
  lab.claimInterface(ns, ifname);
  const uapiDir = join(lab.dir, `wg-${ns}-${ifname}`);
  const runDir = join(lab.dir, `run-${ns}-${ifname}`);
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const env = { ...process.env, ...opts.env, AGENTVPN_RUN_DIR: runDir, AGENTVPN_WG_RUN_DIR: uapiDir };
  const proc = lab.spawn(ns, [process.execPath, AGENTVPN_BIN, 'wg-userspace', '-f', ifname], { name: `wg-userspace-${ifname}`, env, cwd: REPO_ROOT });
  const handle = new WgUserspace(lab, ns, ifname, uapiDir, runDir, proc);
  let exited = false;
  void proc.exited.then(() => (exited = true));
  try {
    await waitFor(async () => {
      if (exited) throw new WaitAborted(`agentvpn wg-userspace exited early:\n${lab.logTail(proc)}`);
      return (await handle.wg(['show', ifname], { check: false })).code === 0;
    }, { timeoutMs: opts.timeoutMs ?? 20_000, what: `agentvpn wg-userspace ${ifname} in ${ns}` });
  } catch (e) {
    await handle.stop().catch(() => {});
    throw e;
  }
  return handle;
}
