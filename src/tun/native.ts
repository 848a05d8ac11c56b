/**
 * The TypeScript face of the C addon (native/*.c): TUN and UDP file descriptors, batched
 * readiness-driven reads, batched writes. The addon only makes syscalls; everything above
 * raw packets lives in TypeScript.
 *
 * Buffers handed to startReader stay owned by the reader until stopReader: the addon keeps
 * raw pointers into them, so never detach or transfer them (postMessage transfer list,
 * ArrayBuffer.transfer) while the reader runs. Slot contents are only valid inside onBatch.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { AgentVpnError } from '../errors.js';

/** Endpoint encoding: bytes 0..16 IPv6 address (IPv4 as ::ffff:a.b.c.d), 16..18 port big-endian, 18..20 zero. */
export const ADDR_SIZE = 20;

/** Which offloads an fd runs with (from tunOpen/udpOpen) and what they did. */
export type OffloadStatus = {
  /** The TUN carries a virtio_net_hdr: reads may be super-packets, writes are coalesced. */
  tunVnet: boolean;
  tunTso: boolean;
  tunUso: boolean;
  udpGso: boolean;
  udpGro: boolean;
  /** GSO was on and a send failed with EIO (the route has no checksum offload): it is off now. */
  gsoOffAfterEio: boolean;
  superReads: number;
  segmentsSplit: number;
  /** TUN reads dropped: a vnet header that does not match its packet, or segments larger than a slot. */
  badReads: number;
  coalescedWrites: number;
  segmentsMerged: number;
  gsoSends: number;
  groReads: number;
};

export interface OpenOptions {
  /** TUN: IFF_VNET_HDR + TSO/USO; UDP: UDP_SEGMENT + UDP_GRO. Default on, unless
   *  AGENTVPN_NO_TUN_OFFLOAD=1 / AGENTVPN_NO_UDP_OFFLOAD=1. The kernel may still refuse (see offloadStatus). */
  offload?: boolean;
}

export interface ReaderHandle {
  readonly __reader: unique symbol;
}

export interface Native {
  /** open /dev/net/tun, IFF_TUN|IFF_NO_PI, TUNSETIFF with name, O_NONBLOCK, FD_CLOEXEC. Returns the kernel's name ('' lets the kernel pick tunN).
   *  With offload, also IFF_VNET_HDR and TUNSETOFFLOAD (CSUM, TSO4/6, USO4/6 where the kernel has it), or plain mode if refused;
   *  reads and writes still carry plain IP packets (the addon splits and coalesces). */
  tunOpen(name: string, opts?: OpenOptions): { fd: number; name: string };
  /** AF_INET6 UDP socket, IPV6_V6ONLY=0 (dual stack), bound to [::]:port (0 = any), O_NONBLOCK, CLOEXEC,
   *  SO_RCVBUF/SO_SNDBUF = bufferBytes (SO_*BUFFORCE first; 0 keeps the kernel default). Returns the bound port.
   *  bindAddr (16 bytes, IPv4 as ::ffff:a.b.c.d; ::ffff:0.0.0.0 is any IPv4 address) binds to that address instead. */
  udpOpen(port: number, bufferBytes: number, bindAddr?: Uint8Array, opts?: OpenOptions): { fd: number; port: number };
  /** Readiness-driven batched reading on the event loop. When the fd is readable, up to maxPackets packets
   *  go into slab slot i (offset i*slotSize, at most slotSize bytes; longer packets are truncated),
   *  lens[i] = length, and for 'udp' the source address into addrs at i*ADDR_SIZE; then onBatch(count) is
   *  called synchronously and must consume the slots before returning. Up to 8 full rounds per wakeup.
   *  Exceptions thrown by onBatch go to onError (default: process.emitWarning), never to the process.
   *  A hard read error (not EAGAIN, not a transient ICMP error) is passed to onError and stops the
   *  reader; call stopReader afterwards as usual. At most 1024 packets per round. */
  startReader(
    fd: number,
    kind: 'tun' | 'udp',
    slab: Buffer,
    slotSize: number,
    maxPackets: number,
    lens: Int32Array,
    addrs: Buffer | null,
    onBatch: (count: number) => void,
    onError?: (err: Error) => void,
  ): ReaderHandle;
  /** Stop watching the fd (synchronously: the fd may be closed right after) and release the JS
   *  references once libuv has closed the handle. Safe to call twice and from inside onBatch. */
  stopReader(h: ReaderHandle): void;
  /** Write packets i<count: slab[offsets[i] .. +lens[i]], one write() each. Returns how many were written;
   *  packets refused with EAGAIN/ENOBUFS/EINVAL/EIO (interface down) are skipped, never thrown. */
  tunWrite(fd: number, slab: Buffer, offsets: Int32Array, lens: Int32Array, count: number): number;
  /** sendmmsg of packets i<count to the address at addrs[i*ADDR_SIZE]. Returns the number sent. A full
   *  socket buffer (EAGAIN/ENOBUFS) drops the rest of the batch; a datagram its destination refuses
   *  (EHOSTUNREACH, EMSGSIZE, EPERM, ...) is skipped and the rest still go. */
  udpSend(fd: number, slab: Buffer, offsets: Int32Array, lens: Int32Array, addrs: Buffer, count: number): number;
  /** close(2). Readers still watching this fd are stopped first. */
  closeFd(fd: number): void;
  /** The offloads fd was opened with (all false for an fd not from tunOpen/udpOpen). */
  offloadStatus(fd: number): OffloadStatus;
}

/** Test-only exports: the TUN split and coalescing on buffers, no device. */
export interface OffloadTesting {
  /** What a TUN read (virtio_net_hdr + packet) becomes: the plain packets, or null when it is dropped. */
  offloadSplit(read: Buffer, slotSize: number): Buffer[] | null;
  /** What tunWrite would write for these packets: each a virtio_net_hdr + (super-)packet. At most 128. */
  offloadCoalesce(slab: Buffer, offsets: Int32Array, lens: Int32Array, count: number): Buffer[];
}

/** What the addon throws for a failed syscall, shaped like Node's own system errors. */
interface SystemError extends Error {
  code?: string;
  errno?: number;
  syscall?: string;
}

const ADDON_PATH = fileURLToPath(new URL('../../build/Release/agentvpn_native.node', import.meta.url));
const REBUILD_HINT = 'run npm ci (needs python3, make, g++)';

/** The addon as C exports it: the open calls take the offload switch already resolved. */
type RawNative = Omit<Native, 'tunOpen' | 'udpOpen'> & OffloadTesting & {
  tunOpen(name: string, offload: boolean): { fd: number; name: string };
  udpOpen(port: number, bufferBytes: number, bindAddr: Uint8Array | undefined, offload: boolean): { fd: number; port: number };
};

function load(): RawNative {
  if (!existsSync(ADDON_PATH)) {
    throw new AgentVpnError('NATIVE_MISSING', `native addon not built: ${ADDON_PATH} is missing`, REBUILD_HINT);
  }
  try {
    return createRequire(import.meta.url)(ADDON_PATH) as RawNative;
  } catch (e) {
    throw new AgentVpnError('NATIVE_MISSING', `cannot load native addon ${ADDON_PATH}: ${(e as Error).message}`, REBUILD_HINT, { cause: e });
  }
}

const raw = load();

/** Offloads are on unless the environment turns them off (kept for bisecting a kernel or NIC problem). */
function offloadDefault(envName: string): boolean {
  return process.env[envName] !== '1';
}

/** Failures the addon reports without an errno (bad arguments) are bugs, not user errors: rethrow them. */
function isSystemError(e: unknown): e is SystemError {
  return e instanceof Error && typeof (e as SystemError).errno === 'number';
}

function nativeError(e: SystemError, what: string): AgentVpnError {
  return new AgentVpnError('NATIVE_ERROR', `${what}: ${e.message}`, 'unexpected system error; check dmesg and report it with this message', { cause: e });
}

function tunError(e: unknown, name: string): unknown {
  if (!isSystemError(e)) return e;
  const opt = { cause: e };
  switch (e.code) {
    case 'ENOENT':
    case 'ENODEV':
    case 'ENXIO':
      return new AgentVpnError('TUN_UNAVAILABLE', `TUN devices are unavailable: ${e.message}`,
        'load the tun module (sudo modprobe tun); in a container, start it with --device /dev/net/tun --cap-add NET_ADMIN', opt);
    case 'EPERM':
    case 'EACCES':
      return new AgentVpnError('TUN_PERMISSION', `no permission to create TUN interface ${name}: ${e.message}`,
        'run as root (sudo agentvpn up) or grant CAP_NET_ADMIN', opt);
    case 'EBUSY':
      return new AgentVpnError('TUN_NAME_TAKEN', `interface ${name} is already in use`,
        `another process owns ${name}; pick --interface NAME or stop it`, opt);
    case 'EINVAL':
      return new AgentVpnError('TUN_BAD_NAME', Buffer.byteLength(name) > 15
        ? `interface name "${name}" is longer than 15 bytes`
        : `cannot use "${name}" as a TUN interface name (${e.message})`,
        "use 1-15 characters without '/', ':' or spaces, not the name of an existing non-TUN interface", opt);
    default:
      return nativeError(e, `opening TUN interface ${name}`);
  }
}

function udpError(e: unknown, port: number): unknown {
  if (!isSystemError(e)) return e;
  if (e.code === 'EADDRINUSE') {
    return new AgentVpnError('UDP_PORT_IN_USE', `UDP port ${port} is already in use`,
      'another process (another agentvpn or WireGuard?) is bound to it; set ListenPort in the config or pass --listen-port (0 picks a free port)',
      { cause: e });
  }
  return nativeError(e, `opening UDP port ${port}`);
}

function defaultOnError(err: Error): void {
  process.emitWarning(err);
}

/** Readers still running, by handle, so closeFd can stop them: libuv must stop watching an fd before
 *  it is closed, or a later fd with the same number would never be polled. */
const running = new Map<ReaderHandle, number>();

export const native: Native = {
  tunOpen(name, opts = {}) {
    try {
      return raw.tunOpen(name, opts.offload ?? offloadDefault('AGENTVPN_NO_TUN_OFFLOAD'));
    } catch (e) {
      throw tunError(e, name);
    }
  },
  udpOpen(port, bufferBytes, bindAddr, opts = {}) {
    try {
      return raw.udpOpen(port, bufferBytes, bindAddr, opts.offload ?? offloadDefault('AGENTVPN_NO_UDP_OFFLOAD'));
    } catch (e) {
      throw udpError(e, port);
    }
  },
  startReader(fd, kind, slab, slotSize, maxPackets, lens, addrs, onBatch, onError = defaultOnError) {
    const h = raw.startReader(fd, kind, slab, slotSize, maxPackets, lens, addrs, onBatch, onError);
    running.set(h, fd);
    return h;
  },
  stopReader(h) {
    running.delete(h);
    raw.stopReader(h);
  },
  // The hot paths go straight to C.
  tunWrite: raw.tunWrite,
  udpSend: raw.udpSend,
  closeFd(fd) {
    for (const [h, readerFd] of running) if (readerFd === fd) native.stopReader(h);
    raw.closeFd(fd);
  },
  offloadStatus: raw.offloadStatus,
};

export const offloadTesting: OffloadTesting = { offloadSplit: raw.offloadSplit, offloadCoalesce: raw.offloadCoalesce };
