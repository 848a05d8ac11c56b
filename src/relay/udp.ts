import { lookup } from 'node:dns/promises';
import { AgentVpnError } from '../errors.js';
import { parseAddress } from '../ip/prefix.js';
import { ADDR_SIZE, native, type ReaderHandle } from '../tun/native.js';
import { MAX_FRAME_SIZE } from './protocol.js';

/**
 * The relay's UDP socket on the native layer: datagrams arrive in rounds of up to READ_BATCH
 * (recvmmsg), and what the relay sends during a round is queued and goes out in one sendmmsg when
 * the round is handled. Node's dgram costs one JS callback (and a Buffer and an address string)
 * per datagram: with an empty handler it tops out at ~430k datagrams/s on our 2-core test machine,
 * so a flood filled the kernel queue, which then dropped everyone's frames alike. Native rounds
 * read ~700k/s there (all one flooder could send), leaving the thread for the relay's checks.
 */

/** Datagrams per read round: the native reader's maximum (the kernel's UIO_MAXIOV). */
export const READ_BATCH = 1024;
/** One byte over the largest frame, so a longer (truncated) datagram shows as oversized. */
const READ_SLOT = MAX_FRAME_SIZE + 1;
/**
 * Kernel socket buffers (wireguard-go asks for 7 MiB): the kernel doubles it and holds ~20,000
 * small datagrams (measured), ~30 ms of a 700k/s flood, so the thread may be off the CPU that
 * long on a busy machine before frames are lost; full-size frames cut that to ~5,000.
 */
const SOCKET_BUFFER_BYTES = 8 << 20;
/** Frames and bytes queued for one sendmmsg; a round of small frames fits, big ones flush early. */
const OUTBOX_FRAMES = 1024;
const OUTBOX_BYTES = 2 << 20;

/** One read round: datagram i is slab[i*slotSize ..+lens[i]], from the endpoint at addrs[i*20]. */
export type RoundHandler = (slab: Buffer, slotSize: number, lens: Int32Array, addrs: Buffer, count: number) => void;

export class RelayUdpSocket {
  private reader: ReaderHandle | null = null;
  private readonly out = Buffer.allocUnsafe(OUTBOX_BYTES);
  private readonly outOffsets = new Int32Array(OUTBOX_FRAMES);
  private readonly outLens = new Int32Array(OUTBOX_FRAMES);
  private readonly outAddrs = Buffer.alloc(OUTBOX_FRAMES * ADDR_SIZE);
  private queued = 0;
  private queuedBytes = 0;
  private flushScheduled = false;
  private closed = false;
  /** sendmmsg calls so far: one per send round. */
  flushes = 0;

  private constructor(private readonly fd: number, readonly port: number, private readonly onUnsent: (n: number) => void) {}

  /** Binds host:port (a name is resolved first); throws the native layer's error (code in its cause). */
  static async open(host: string, port: number, onUnsent: (n: number) => void): Promise<RelayUdpSocket> {
    const ip = parseAddress(host.replace(/%.*$/, '')) ?? parseAddress((await lookup(host)).address);
    if (!ip) throw new AgentVpnError('BAD_ADDRESS', `cannot bind the relay to "${host}"`, 'give an IP address or a resolvable name');
    const bindAddr = Buffer.alloc(16);
    if (ip.length === 4) {
      bindAddr[10] = bindAddr[11] = 0xff; // ::ffff:a.b.c.d: IPv4 only (0.0.0.0: any IPv4 address)
      bindAddr.set(ip, 12);
    } else {
      bindAddr.set(ip); // :: is both families, as a dgram udp6 socket on :: is
    }
    const { fd, port: bound } = native.udpOpen(port, SOCKET_BUFFER_BYTES, bindAddr);
    return new RelayUdpSocket(fd, bound, onUnsent);
  }

  /** Starts reading; each round is handed over, then what it queued is sent. */
  start(onRound: RoundHandler, onError: (err: Error) => void): void {
    const slab = Buffer.alloc(READ_BATCH * READ_SLOT);
    const lens = new Int32Array(READ_BATCH);
    const addrs = Buffer.alloc(READ_BATCH * ADDR_SIZE);
    this.reader = native.startReader(this.fd, 'udp', slab, READ_SLOT, READ_BATCH, lens, addrs, (n) => {
      try {
        onRound(slab, READ_SLOT, lens, addrs, n);
      } finally {
        this.flush();
      }
    }, onError);
  }

  /** Queues a datagram to the 20-byte endpoint at ep[epOff]; it is copied, so both may be reused. */
  send(frame: Uint8Array, ep: Uint8Array, epOff = 0): void {
    if (this.queued === OUTBOX_FRAMES || this.queuedBytes + frame.length > OUTBOX_BYTES) this.flush();
    const i = this.queued++;
    this.out.set(frame, this.queuedBytes);
    this.outOffsets[i] = this.queuedBytes;
    this.outLens[i] = frame.length;
    this.outAddrs.set(ep.subarray(epOff, epOff + ADDR_SIZE), i * ADDR_SIZE);
    this.queuedBytes += frame.length;
    // Sends queued outside a read round (TCP frames, timers) go out once the current task is done.
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /** Sends what is queued in one sendmmsg; what the kernel refused (full buffer) is reported. */
  flush(): void {
    this.flushScheduled = false;
    if (this.queued === 0 || this.closed) return;
    const n = this.queued;
    this.queued = this.queuedBytes = 0;
    this.flushes++;
    const sent = native.udpSend(this.fd, this.out, this.outOffsets, this.outLens, this.outAddrs, n);
    if (sent < n) this.onUnsent(n - sent);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.reader) native.stopReader(this.reader);
    this.reader = null;
    this.queued = this.queuedBytes = 0;
    native.closeFd(this.fd);
  }
}
