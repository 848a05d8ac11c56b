import { lookup } from 'node:dns/promises';
import type { Logger as PinoLogger } from 'pino';
import type { JsonValue } from '../audit/entry.js';
import type { AuditSink } from '../audit/sink.js';
import type { DeviceConfig } from '../config/types.js';
import { encodeKey } from '../crypto/keys.js';
import { AgentVpnError } from '../errors.js';
import { formatPrefix, networkOf, parseAddress, type Prefix } from '../ip/prefix.js';
import { native, type OffloadStatus, type ReaderHandle } from '../tun/native.js';
import { addRoutes, configureInterface, deleteInterface } from '../tun/interface.js';
import { Device } from '../wireguard/device.js';
import type { PacketFilter } from '../wireguard/packet-filter.js';
import { makeEndpoint } from '../net/endpoint.js';
import { UdpEndpoint, type Endpoint } from '../wireguard/endpoint.js';
import { ControlServer, type ControlHandler } from './control-server.js';
import { Firewall } from './firewall.js';
import { MagicSock } from '../paths/magicsock.js';
import type { ProbeReceive, ProbeSocket } from '../paths/birthday.js';
import type { DeviceStatus } from './status-types.js';
import { serveUapi, type UapiMode } from '../uapi/serve.js';
import type { UapiServer } from '../uapi/server.js';

/** Packets per batch in each direction: enough to amortize a syscall, small enough for latency. */
const BATCH = 64;
/** UDP socket buffers: large, so bursts between batches are not dropped by the kernel. */
const SOCKET_BUFFER_BYTES = 8 * 1024 * 1024;
/**
 * A birthday probe socket's reader while it probes: up to 16 datagrams a round in slots a WireGuard
 * packet of the MTU fits in (disco is ~100 bytes): 256 of them hold ~6 MB, not 256 x the main
 * reader's slab. The one socket kept for a peer's traffic is read in batches as large as the main one's.
 */
const PROBE_BATCH = 16;
const PROBE_SLOT_OVERHEAD = 64;

export interface DaemonOptions {
  iface: string;
  config: DeviceConfig;
  log: PinoLogger;
  /** More control-socket methods (registry mode adds id, peers, resolve). */
  handlers?: Record<string, ControlHandler>;
  /** Install the nftables rules that keep the overlay addresses off other interfaces (default true). */
  firewall?: boolean;
  /** Conditions an operator must act on (registry mode: trust alerts), shown by `status`. */
  alerts?: () => string[];
  /** The policy in the data path (src/policy/filter.ts); none = every packet passes. */
  filter?: PacketFilter;
  /** Where up/down, first handshakes and path changes are recorded (src/audit/). */
  audit?: AuditSink;
  /** The audit subject for a peer's WireGuard key (fleet mode: its agent ID); default the key in base64. */
  auditSubjectOf?: (wgKey: Uint8Array) => string;
  /** TUN offloads (TSO/GRO) and UDP offloads (GSO/GRO); default on unless AGENTVPN_NO_TUN_OFFLOAD=1 / AGENTVPN_NO_UDP_OFFLOAD=1. */
  offload?: { tun?: boolean; udp?: boolean };
  /** wg(8)'s socket (src/uapi/): read-write (default), read-only (fleet: peers come from the registry), or off. */
  uapi?: UapiMode;
  /** `wg-userspace`: the interface as wireguard-go leaves it (no address, route, link up or firewall) and the UAPI socket required. */
  bare?: boolean;
}

/** A peer as the daemon manages it at run time (registry mode adds and updates these). */
export interface DynamicPeer {
  publicKey: Uint8Array;
  allowedIps: Prefix[];
  /** A fleet peer's path (the path layer chooses where it goes), or a plain address. */
  endpoint: Endpoint | null;
  persistentKeepalive?: number;
}

/** Resolves an endpoint (IP literal or host name) to the native 20-byte form. */
export async function resolveEndpoint(host: string, port: number): Promise<Buffer> {
  const literal = parseAddress(host);
  if (literal) return makeEndpoint(literal, port);
  try {
    const { address } = await lookup(host);
    return makeEndpoint(parseAddress(address)!, port);
  } catch (e) {
    throw new AgentVpnError('ENDPOINT_UNRESOLVED', `cannot resolve peer endpoint host "${host}"`, 'check the Endpoint line and DNS, or use an IP address', { cause: e });
  }
}

/** A route to 0.0.0.0/0 or ::/0 would capture all host traffic; agentvpn carries overlay routes only. */
function isDefaultRoute(p: Prefix): boolean {
  return p.bits === 0;
}

/**
 * The agent process: owns the TUN device and UDP socket, runs the WireGuard device between them,
 * and answers the local control socket. start() returns once the interface is up.
 */
export class Daemon {
  private device: Device | null = null;
  private magicsock: MagicSock | null = null;
  private tunFd = -1;
  private udpFd = -1;
  private listenPort = 0;
  private readers: ReaderHandle[] = [];
  private udpReader: ReaderHandle | null = null;
  private uapi: UapiServer | null = null;
  private control: ControlServer | null = null;
  private firewall: Firewall | null = null;
  private interfaceCreated = false;
  private readonly startedAt = Date.now();
  private stopping: Promise<void> | null = null;

  constructor(private readonly opts: DaemonOptions) {}

  async start(): Promise<void> {
    const { iface, config, log } = this.opts;
    try {
      // The control socket first: it refuses to start when a daemon already owns this interface.
      this.control = new ControlServer(iface, {
        ...this.opts.handlers,
        status: async () => ({ ...this.status(), firewall: await this.firewall?.status(), alerts: this.opts.alerts?.(), eventStreams: this.control?.streamsStatus() }),
        // The same path as SIGTERM, so whoever owns the process (up, fleet mode) cleans up everything.
        shutdown: () => {
          setImmediate(() => process.kill(process.pid, 'SIGTERM'));
          return { stopping: true };
        },
      }, { onInternalError: (method, err) => log.error({ method, err }, 'control handler failed') });
      await this.control.start();

      const endpoints = await Promise.all(config.peers.map((p) => (p.endpoint ? resolveEndpoint(p.endpoint.host, p.endpoint.port) : null)));
      const tun = native.tunOpen(iface, { offload: this.opts.offload?.tun });
      this.tunFd = tun.fd;
      this.interfaceCreated = true;
      const udp = native.udpOpen(config.listenPort, SOCKET_BUFFER_BYTES, undefined, { offload: this.opts.offload?.udp });
      this.udpFd = udp.fd;
      this.listenPort = udp.port;

      const tunFd = this.tunFd;
      // this.udpFd, not a copy: a listen-port change (rebind) replaces the socket.
      const sock = new MagicSock({ send: (slab, offsets, lens, addrs, count) => native.udpSend(this.udpFd, slab, offsets, lens, addrs, count) }, log);
      sock.onPathChange = (wgKey, change) => this.audit('path.changed', this.subjectOf(wgKey), { ...change });
      this.magicsock = sock;
      const device = new Device({
        privateKey: config.privateKey,
        mtu: config.mtu,
        batchSize: BATCH,
        log,
        alwaysUnderLoad: process.env.AGENTVPN_TEST_UNDER_LOAD === '1',
        bind: sock,
        tun: { write: (slab, offsets, lens, count) => native.tunWrite(tunFd, slab, offsets, lens, count) },
        filter: this.opts.filter,
        onFirstHandshake: (peer, initiator) => this.audit('peer.handshake', this.subjectOf(peer.publicKey), {
          initiator, endpoint: peer.endpoint ? String(peer.endpoint) : null,
        }),
      });
      sock.attach(device);
      sock.setProbeSockets({ open: (receive) => this.openProbeSocket(receive) });
      this.device = device;
      config.peers.forEach((p, i) => device.addPeer({ ...p, endpoint: endpoints[i] && new UdpEndpoint(endpoints[i]!) }));
      this.uapi = await serveUapi({
        iface, log, mode: this.opts.uapi ?? 'read-write', keySet: !this.opts.bare, required: this.opts.bare ?? false,
        host: { device, listenPort: () => this.listenPort, rebind: (port) => this.rebind(port, sock), removePeer: (key) => this.removePeer(key) },
      });

      if (!this.opts.bare) {
        // The rules go in before the addresses, so the addresses are never reachable from the LAN.
        this.firewall = new Firewall({ iface, addresses: config.addresses, enabled: this.opts.firewall ?? true, log });
        await this.firewall.start();
        await configureInterface(iface, { addresses: config.addresses, mtu: config.mtu });
        await this.routeTo(config.peers.flatMap((p) => p.allowedIps));
        if (config.peers.some((p) => p.allowedIps.some(isDefaultRoute))) {
          log.warn({}, 'AllowedIPs 0.0.0.0/0 or ::/0 accepted for routing inside the tunnel, but no default route was installed');
        }
      }

      this.startReaders(device, sock);
      device.start();
      const offloads = this.offloads();
      log.info({ iface, listenPort: this.listenPort, peers: config.peers.length, tunTso: offloads.tun.tunTso, udpGso: offloads.udp.udpGso, udpGro: offloads.udp.udpGro }, 'agentvpn is up');
      this.audit('daemon.up', iface, { pid: process.pid, listenPort: this.listenPort, addresses: config.addresses.map(formatPrefix), peers: config.peers.length });
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  private audit(type: string, subject: string, details: { [key: string]: JsonValue }): void {
    this.opts.audit?.(type, subject, details);
  }

  private subjectOf(wgKey: Uint8Array): string {
    return this.opts.auditSubjectOf?.(wgKey) ?? Buffer.from(wgKey).toString('base64');
  }

  /** Routes allowed IPs into the TUN, except default routes and what the interface's own subnets already cover. */
  private async routeTo(prefixes: Prefix[]): Promise<void> {
    const covered = (p: Prefix) => this.opts.config.addresses.some((a) => {
      if (a.family !== p.family || a.bits > p.bits) return false;
      return formatPrefix(networkOf({ ...p, bits: a.bits })) === formatPrefix(networkOf(a));
    });
    const routes = prefixes.filter((p) => !isDefaultRoute(p) && !covered(p));
    if (routes.length) await addRoutes(this.opts.iface, routes);
  }

  /** Adds a peer, or updates its endpoint and allowed IPs when it exists. */
  async upsertPeer(p: DynamicPeer): Promise<void> {
    const device = this.device;
    if (!device) return;
    const existing = device.getPeer(p.publicKey);
    if (existing) {
      if (p.endpoint) device.setEndpoint(existing, p.endpoint);
      device.allowedIps.removeValue(existing);
      for (const prefix of p.allowedIps) device.allowedIps.insert(prefix, existing);
    } else {
      device.addPeer({ publicKey: p.publicKey, allowedIps: p.allowedIps, endpoint: p.endpoint, persistentKeepalive: p.persistentKeepalive });
    }
    await this.routeTo(p.allowedIps);
  }

  /** The socket layer (path choice, relay, disco) once started. */
  get sock(): MagicSock | null {
    return this.magicsock;
  }

  /** Sends raw datagrams on the agent's UDP socket (STUN from the same port WireGuard uses). */
  sendRaw(msg: Buffer, endpoint: Buffer): void {
    if (this.udpFd >= 0) native.udpSend(this.udpFd, msg, Int32Array.of(0), Int32Array.of(msg.length), endpoint, 1);
  }

  /** Our WireGuard key changed (a key rotation): new handshakes use it, sessions in flight go on. */
  setPrivateKey(privateKey: Uint8Array): void {
    this.device?.setPrivateKey(privateKey);
  }

  /** Drops a peer: its sessions, allowed IPs and path state (fleet routes are the pool's own). */
  removePeer(publicKey: Uint8Array): void {
    this.device?.removePeer(publicKey);
    this.magicsock?.removePeer(Buffer.from(publicKey));
  }

  /** A new listen port (wg set): the new socket is bound before the old one closes, so a taken port changes nothing. */
  private async rebind(port: number, sock: MagicSock): Promise<void> {
    const udp = native.udpOpen(port, SOCKET_BUFFER_BYTES, undefined, { offload: this.opts.offload?.udp });
    native.closeFd(this.udpFd); // stops its reader too
    this.readers = this.readers.filter((r) => r !== this.udpReader);
    this.udpFd = udp.fd;
    this.listenPort = udp.port;
    this.startUdpReader(sock);
    this.opts.log.info({ listenPort: this.listenPort }, 'listen port changed');
  }

  private startReaders(device: Device, sock: MagicSock): void {
    const tunSlot = device.tunSlotSize;
    const tunSlab = Buffer.alloc(tunSlot * BATCH);
    const tunLens = new Int32Array(BATCH);
    this.readers.push(native.startReader(this.tunFd, 'tun', tunSlab, tunSlot, BATCH, tunLens, null, (n) => device.handleTunBatch(tunSlab, tunSlot, tunLens, n), this.onReaderError));
    this.startUdpReader(sock);
  }

  /** The reader of the current UDP socket (a rebind starts another). */
  private startUdpReader(sock: MagicSock): void {
    const slot = this.device!.tunSlotSize;
    const slab = Buffer.alloc(slot * BATCH);
    const lens = new Int32Array(BATCH);
    const addrs = Buffer.alloc(20 * BATCH);
    this.udpReader = native.startReader(this.udpFd, 'udp', slab, slot, BATCH, lens, addrs, (n) => sock.receive(slab, slot, lens, addrs, n), this.onReaderError);
    this.readers.push(this.udpReader);
  }

  /** One more UDP socket on a random port for birthday probing, with its reader; null when the kernel refuses (fd limit). */
  private openProbeSocket(receive: ProbeReceive): ProbeSocket | null {
    let fd: number;
    try {
      // No UDP GRO: its reader would hold 1 MB of scratch (256 sockets: 256 MB); so no GSO either.
      fd = native.udpOpen(0, 0, undefined, { offload: false }).fd;
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'cannot open a birthday probe socket');
      return null;
    }
    const slot = Math.max(2048, this.opts.config.mtu + PROBE_SLOT_OVERHEAD);
    let open = true;
    let reader: ReaderHandle;
    // A failed read on a probe socket ends that socket only, not the data plane.
    const startReading = (slot: number, batch: number): ReaderHandle => {
      const slab = Buffer.alloc(slot * batch);
      const lens = new Int32Array(batch);
      const addrs = Buffer.alloc(20 * batch);
      return native.startReader(fd, 'udp', slab, slot, batch, lens, addrs, (n) => receive(probe, slab, slot, lens, addrs, n),
        (err) => this.opts.log.warn({ err: err.message }, 'birthday probe socket failed'));
    };
    const probe: ProbeSocket = {
      send: (buf, offsets, lensOut, to, count) => (open ? native.udpSend(fd, buf, offsets, lensOut, to, count) : 0),
      close: () => {
        if (!open) return;
        open = false;
        native.stopReader(reader);
        native.closeFd(fd);
      },
      keep: () => {
        if (!open) return;
        native.stopReader(reader);
        reader = startReading(slot, BATCH);
      },
    };
    reader = startReading(slot, PROBE_BATCH);
    return probe;
  }

  private readonly onReaderError = (err: Error): void => {
    // A failed syscall means the reader stopped (the TUN was deleted under us, say): the data
    // plane is gone, so shut down rather than pretend to be up. Handler bugs are only logged.
    if ((err as NodeJS.ErrnoException).syscall) {
      this.opts.log.fatal({ err }, 'packet I/O failed; shutting down');
      process.kill(process.pid, 'SIGTERM');
    } else {
      this.opts.log.error({ err }, 'packet handler failed');
    }
  };

  /** Idempotent: closes everything that start() opened, also after a partial start. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      if (this.device) this.audit('daemon.down', this.opts.iface, { pid: process.pid, upForS: Math.round((Date.now() - this.startedAt) / 1000) });
      await this.uapi?.stop();
      for (const r of this.readers) native.stopReader(r);
      this.readers = [];
      this.magicsock?.stop();
      this.device?.stop();
      if (this.udpFd >= 0) native.closeFd(this.udpFd);
      if (this.tunFd >= 0) native.closeFd(this.tunFd);
      this.udpFd = this.tunFd = -1;
      // Closing the last fd of a non-persistent TUN removes it with its addresses and routes;
      // deleting it explicitly covers a device left behind by a crash under the same name. Not for
      // wg-userspace: its interface may have moved to another namespace, and one of the same name here is not ours.
      if (this.interfaceCreated && !this.opts.bare) await deleteInterface(this.opts.iface).catch(() => {});
      // Only once the addresses are gone: until then they stay guarded.
      await this.firewall?.stop().catch((err) => this.opts.log.error({ err }, 'cannot remove the firewall table'));
      await this.control?.stop();
      this.opts.log.info({ iface: this.opts.iface }, 'agentvpn is down');
    })();
    return this.stopping;
  }

  /** The offloads the kernel granted on our fds, with their counters. */
  private offloads(): { tun: OffloadStatus; udp: OffloadStatus } {
    return { tun: native.offloadStatus(this.tunFd), udp: native.offloadStatus(this.udpFd) };
  }

  status(): DeviceStatus {
    const device = this.device;
    const peers = device?.allPeers() ?? [];
    return {
      interface: this.opts.iface,
      publicKey: device ? encodeKey(device.local.publicKey) : '',
      listenPort: this.listenPort,
      addresses: this.opts.config.addresses.map(formatPrefix),
      mtu: this.opts.config.mtu,
      pid: process.pid,
      startedAt: this.startedAt,
      dropped: { ...(device?.dropped ?? {}) },
      policy: this.opts.filter?.report(),
      pathStats: this.magicsock ? { ...this.magicsock.stats, ...this.magicsock.birthdayStats() } : undefined,
      offloads: this.tunFd >= 0 && this.udpFd >= 0 ? this.offloads() : undefined,
      peers: peers.map((p) => ({
        publicKey: encodeKey(p.publicKey),
        endpoint: p.endpoint ? String(p.endpoint) : null,
        allowedIps: device!.allowedIps.prefixesOf(p).map(formatPrefix),
        latestHandshake: p.latestHandshakeAt,
        handshakes: p.handshakes,
        rxBytes: p.rxBytes,
        txBytes: p.txBytes,
        rxPackets: p.rxPackets,
        txPackets: p.txPackets,
        persistentKeepalive: p.persistentKeepalive,
        path: this.magicsock?.pathOf(p.publicKey) ?? undefined,
        dropped: { ...p.dropped },
        policyDenies: this.opts.filter?.deniesOf(p) ?? undefined,
      })),
    };
  }
}
