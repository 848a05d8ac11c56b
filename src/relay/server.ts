import dgram, { type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { AgentVpnError } from '../errors.js';
import { parseAddress } from '../ip/prefix.js';
import { answerBindingRequest } from '../paths/stun.js';
import { makeEndpoint } from '../wireguard/endpoint.js';
import {
  DEFAULT_LIMITS, HELLO_VERIFY_BURST, HELLO_VERIFY_RATE, NOTICE_RATE_PER_CLIENT, NOTICE_RATE_UNKNOWN, TokenBucket, monotonicMs, validateLimits, type RelayLimits,
} from './limits.js';
import {
  CLIENT_IDLE_TIMEOUT_MS, FRAME_HELLO, FRAME_KEEPALIVE, FRAME_RECV, FRAME_SEND, HELLO_FLAG_PROBE, KEEPALIVE_ACK_FRAME, KEY_SIZE,
  MAX_CLOCK_SKEW_MS, MAX_FRAME_SIZE, NOTICE_BAD_SIGNATURE, NOTICE_NOT_ALLOWED, NOTICE_NOT_REGISTERED, NOTICE_PEER_NOT_HERE,
  NOTICE_STALE_TIMESTAMP, PACKET_HEADER_SIZE, SILENT_LOG, SWEEP_INTERVAL_MS, TCP_HELLO_TIMEOUT_MS, encodeHelloAck, encodeNotice, parseHello, wgKeyOf,
  type RelayLog,
} from './protocol.js';
import { FrameReader, MAX_TCP_BACKLOG_BYTES, UPGRADE_PATH, UPGRADE_PROTOCOL, UPGRADE_RESPONSE, encodeTcpFrame } from './tcp.js';

export type { RelayLimits } from './limits.js';
export type { RelayLog } from './protocol.js';

export interface RelayOptions {
  /** UDP socket for relay frames and STUN; port 0 picks a free one. Without it: TCP only. */
  udp?: { host: string; port: number };
  /** Also answer STUN on UDP port+1, so one server lets an agent see whether its NAT mapping varies by destination. */
  stunSecondPort?: boolean;
  /** An HTTP(S) server to take the TCP fallback from (upgrade on /v1/relay). */
  tcpServer?: HttpServer;
  /** Who may use the relay, by Ed25519 public key (default: anyone with a valid hello). */
  allow?(edPub: Uint8Array): boolean;
  limits?: RelayLimits;
  log?: RelayLog;
}

/** Why frames were dropped; counted in stats().dropped. */
export type DropReason =
  | 'garbage' | 'oversized' | 'bad-signature' | 'stale-timestamp' | 'not-allowed' | 'hello-rate' | 'not-registered'
  | 'peer-not-here' | 'rate-limit' | 'byte-limit' | 'tcp-backlog' | 'send-error';

export interface RelayStats {
  clients: number;
  udpClients: number;
  tcpClients: number;
  forwardedPackets: number;
  forwardedBytes: number;
  stunAnswered: number;
  dropped: Partial<Record<DropReason, number>>;
}

export interface RunningRelay {
  /** The UDP port relay frames and STUN are answered on (0 without UDP). */
  udpPort: number;
  /** The second STUN port (udpPort+1), or 0. */
  stunSecondPort: number;
  stop(): Promise<void>;
  stats(): RelayStats;
}

/** Tries at finding two free consecutive UDP ports when the port is 0. */
const PORT_PAIR_ATTEMPTS = 20;

/** Where a client is: a UDP address, or its upgraded TCP connection. */
type Transport = { kind: 'udp'; addr: string; port: number; id: string } | { kind: 'tcp'; socket: Duplex };

class Client {
  lastHeard = monotonicMs();
  readonly packets: TokenBucket;
  readonly bytes: TokenBucket;
  readonly notices = new TokenBucket(NOTICE_RATE_PER_CLIENT, NOTICE_RATE_PER_CLIENT);

  constructor(readonly wgKey: Buffer, readonly id: string, public transport: Transport, limits: RelayLimits) {
    this.packets = new TokenBucket(limits.packetsPerSecond, limits.burst.packets);
    this.bytes = new TokenBucket(limits.bytesPerSecond, limits.burst.bytes);
  }
}

/** Per TCP connection: the client that said hello on it, if any. */
interface TcpConn {
  socket: Duplex;
  client: Client | null;
}

function bindUdp(host: string, port: number): Promise<UdpSocket> {
  const socket = dgram.createSocket({ type: isIP(host) === 6 ? 'udp6' : 'udp4', recvBufferSize: 4 << 20, sendBufferSize: 4 << 20 });
  return new Promise((resolve, reject) => {
    socket.once('error', (e) => {
      socket.close();
      reject(e);
    });
    socket.bind(port, host, () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

/** The relay socket and, when asked, a STUN-only socket on the next port. Port 0: any free pair. */
async function bindSockets(host: string, port: number, second: boolean): Promise<[UdpSocket, UdpSocket | null]> {
  for (let attempt = 0; ; attempt++) {
    const main = await bindUdp(host, port);
    if (!second) return [main, null];
    const bound = main.address().port;
    try {
      if (bound === 65535) throw Object.assign(new Error('no port after 65535'), { code: 'EADDRINUSE' });
      return [main, await bindUdp(host, bound + 1)];
    } catch (e) {
      main.close();
      if (port !== 0 || attempt >= PORT_PAIR_ATTEMPTS) throw e;
    }
  }
}

/** A dgram address as the 20-byte endpoint STUN answers are built from. */
function endpointOf(rinfo: RemoteInfo): Buffer | null {
  const addr = parseAddress(rinfo.address.replace(/%.*$/, ''));
  return addr ? makeEndpoint(addr, rinfo.port) : null;
}

/**
 * Starts a relay: it forwards opaque packets between agents addressed by WireGuard key, over UDP
 * and over TCP (HTTP upgrade), and answers STUN on its UDP port(s).
 */
export async function startRelay(opts: RelayOptions): Promise<RunningRelay> {
  const log = opts.log ?? SILENT_LOG;
  const limits = validateLimits(opts.limits ?? DEFAULT_LIMITS);
  const clients = new Map<string, Client>(); // by WireGuard key (latin1)
  const udpClients = new Map<string, Client>(); // by "addr|port"
  const lastTimestamp = new Map<string, { ts: number; at: number }>(); // by Ed25519 key (latin1)
  const tcpConns = new Set<TcpConn>();
  const helloBudget = new TokenBucket(HELLO_VERIFY_RATE, HELLO_VERIFY_BURST);
  const unknownNotices = new TokenBucket(NOTICE_RATE_UNKNOWN, NOTICE_RATE_UNKNOWN);
  const counters = { forwardedPackets: 0, forwardedBytes: 0, stunAnswered: 0, dropped: {} as Partial<Record<DropReason, number>> };
  const drop = (reason: DropReason) => void (counters.dropped[reason] = (counters.dropped[reason] ?? 0) + 1);

  let udp: UdpSocket | null = null;
  let stun2: UdpSocket | null = null;
  if (opts.udp) {
    try {
      [udp, stun2] = await bindSockets(opts.udp.host, opts.udp.port, opts.stunSecondPort ?? false);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new AgentVpnError('LISTEN_FAILED', `relay cannot bind UDP ${opts.udp.host}:${opts.udp.port}${opts.stunSecondPort ? ' (and the next port for STUN)' : ''}: ${err.message}`,
        err.code === 'EADDRINUSE' ? 'another process uses that UDP port: pick another port' : 'check the listen address', { cause: e });
    }
  }

  const sendTo = (t: Transport, frame: Buffer) => {
    if (t.kind === 'udp') {
      udp!.send(frame, t.port, t.addr, (err) => err && drop('send-error'));
    } else if (t.socket.writableLength > MAX_TCP_BACKLOG_BYTES) {
      drop('tcp-backlog');
    } else {
      t.socket.write(encodeTcpFrame(frame));
    }
  };

  const forget = (c: Client) => {
    if (clients.get(c.id) === c) clients.delete(c.id);
    const t = c.transport;
    if (t.kind === 'udp') {
      if (udpClients.get(t.id) === c) udpClients.delete(t.id);
    } else {
      t.socket.destroy();
    }
  };

  /** Points the client with this key at a transport (new client, new address, or UDP⇄TCP). */
  const register = (wgKey: Buffer, t: Transport, conn: TcpConn | null): Client => {
    const id = wgKey.toString('latin1');
    if (t.kind === 'udp') {
      const other = udpClients.get(t.id);
      if (other && other.id !== id) forget(other); // an old mapping reused by a new agent
    }
    let c = clients.get(id);
    if (!c) {
      c = new Client(Buffer.from(wgKey), id, t, limits);
      clients.set(id, c);
      log.info({ event: 'client', key: wgKey.toString('base64'), via: t.kind, remote: t.kind === 'udp' ? `${t.addr}:${t.port}` : undefined }, 'relay client registered');
    } else {
      const old = c.transport;
      if (old.kind === 'udp' && (t.kind !== 'udp' || old.id !== t.id)) udpClients.delete(old.id);
      if (old.kind === 'tcp' && (t.kind !== 'tcp' || old.socket !== t.socket)) {
        for (const k of tcpConns) if (k.socket === old.socket) k.client = null;
        old.socket.destroy();
      }
      c.transport = t;
      c.lastHeard = monotonicMs();
    }
    if (t.kind === 'udp') udpClients.set(t.id, c);
    if (conn) conn.client = c;
    return c;
  };

  const refuseHello = (t: Transport, reason: DropReason, code: number) => {
    drop(reason);
    if (unknownNotices.take()) sendTo(t, encodeNotice(code));
  };

  const onHello = (frame: Buffer, t: Transport, conn: TcpConn | null) => {
    const hello = parseHello(frame);
    if (!hello) return drop('garbage');
    if (!helloBudget.take()) return drop('hello-rate');
    const now = Date.now();
    const edId = hello.edPub.toString('latin1');
    const last = lastTimestamp.get(edId);
    if (Math.abs(now - hello.timestamp) > MAX_CLOCK_SKEW_MS || (last && hello.timestamp <= last.ts)) {
      return refuseHello(t, 'stale-timestamp', NOTICE_STALE_TIMESTAMP);
    }
    if (!hello.verify()) return refuseHello(t, 'bad-signature', NOTICE_BAD_SIGNATURE);
    lastTimestamp.set(edId, { ts: hello.timestamp, at: now });
    if (opts.allow && !safeAllow(opts.allow, hello.edPub)) return refuseHello(t, 'not-allowed', NOTICE_NOT_ALLOWED);
    const wgKey = wgKeyOf(hello.edPub);
    if (!(hello.flags & HELLO_FLAG_PROBE)) register(wgKey, t, conn);
    sendTo(t, encodeHelloAck(hello.flags & HELLO_FLAG_PROBE, wgKey, hello.timestamp));
  };

  const safeAllow = (allow: (k: Uint8Array) => boolean, key: Uint8Array): boolean => {
    try {
      return allow(key) === true;
    } catch (err) {
      log.error({ err }, 'relay allow hook failed');
      return false;
    }
  };

  /** SEND from a registered client: rewrite the frame into RECV in place and pass it on. */
  const onSend = (frame: Buffer, from: Client) => {
    if (frame.length < PACKET_HEADER_SIZE) return drop('garbage');
    const packetBytes = frame.length - PACKET_HEADER_SIZE;
    if (!from.packets.take(1, from.lastHeard)) return drop('rate-limit');
    if (!from.bytes.take(packetBytes, from.lastHeard)) return drop('byte-limit');
    const dst = clients.get(frame.toString('latin1', 1, 1 + KEY_SIZE));
    if (!dst) {
      drop('peer-not-here');
      if (from.notices.take()) sendTo(from.transport, encodeNotice(NOTICE_PEER_NOT_HERE, frame.subarray(1, 1 + KEY_SIZE)));
      return;
    }
    frame[0] = FRAME_RECV;
    from.wgKey.copy(frame, 1);
    counters.forwardedPackets++;
    counters.forwardedBytes += packetBytes;
    sendTo(dst.transport, frame);
  };

  /** One frame from a UDP address or a TCP connection; `from` is the client registered there, if any. */
  const onFrame = (frame: Buffer, t: Transport, from: Client | null, conn: TcpConn | null) => {
    if (frame.length > MAX_FRAME_SIZE) return drop('oversized');
    const type = frame[0];
    if (type === FRAME_HELLO) return onHello(frame, t, conn);
    if (type !== FRAME_SEND && type !== FRAME_KEEPALIVE) return drop('garbage');
    if (!from) {
      drop('not-registered');
      if (unknownNotices.take()) sendTo(t, encodeNotice(NOTICE_NOT_REGISTERED));
      return;
    }
    from.lastHeard = monotonicMs();
    if (type === FRAME_SEND) return onSend(frame, from);
    if (frame.length !== 1) return drop('garbage');
    sendTo(from.transport, KEEPALIVE_ACK_FRAME);
  };

  const onDatagram = (msg: Buffer, rinfo: RemoteInfo) => {
    if (msg.length === 0) return drop('garbage');
    if ((msg[0] & 0xf0) === 0xb0) {
      const id = `${rinfo.address}|${rinfo.port}`;
      const from = udpClients.get(id) ?? null;
      return onFrame(msg, from?.transport ?? { kind: 'udp', addr: rinfo.address, port: rinfo.port, id }, from, null);
    }
    if (!answerStun(udp!, msg, rinfo)) drop('garbage');
  };

  /** STUN Binding requests (RFC 5389, and classic RFC 3489 ones) get the address they came from. */
  const answerStun = (socket: UdpSocket, msg: Buffer, rinfo: RemoteInfo): boolean => {
    const src = endpointOf(rinfo);
    const answer = src && answerBindingRequest(msg, 0, msg.length, src, 0);
    if (!answer) return false;
    counters.stunAnswered++;
    socket.send(answer, rinfo.port, rinfo.address, (err) => err && drop('send-error'));
    return true;
  };

  const guarded = <A extends unknown[]>(what: string, fn: (...a: A) => void) => (...a: A) => {
    try {
      fn(...a);
    } catch (err) {
      drop('garbage');
      log.error({ err }, `relay: handling ${what} failed`);
    }
  };

  udp?.on('message', guarded('a datagram', onDatagram));
  stun2?.on('message', guarded('a STUN datagram', (msg: Buffer, rinfo: RemoteInfo) => void (answerStun(stun2!, msg, rinfo) || drop('garbage'))));
  for (const s of [udp, stun2]) s?.on('error', (err) => log.warn({ err }, 'relay UDP socket error'));

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const ours = (req.url ?? '').split('?')[0] === UPGRADE_PATH && String(req.headers.upgrade ?? '').toLowerCase() === UPGRADE_PROTOCOL;
    if (!ours) {
      // Leave other upgrades to other listeners; with none, refuse.
      if (opts.tcpServer!.listenerCount('upgrade') === 1) socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    const conn: TcpConn = { socket, client: null };
    tcpConns.add(conn);
    const t: Transport = { kind: 'tcp', socket };
    const reader = new FrameReader(guarded('a TCP frame', (frame: Buffer) => onFrame(frame, t, conn.client, conn)), (reason) => {
      drop(reason);
      socket.destroy();
    });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      reader.close();
      tcpConns.delete(conn);
      if (conn.client) forget(conn.client);
    });
    const helloTimer = setTimeout(() => conn.client || socket.destroy(), TCP_HELLO_TIMEOUT_MS);
    helloTimer.unref();
    socket.once('close', () => clearTimeout(helloTimer));
    (socket as Socket).setNoDelay?.(true);
    socket.write(UPGRADE_RESPONSE);
    if (head.length) reader.push(head);
  };
  opts.tcpServer?.on('upgrade', onUpgrade);

  const sweep = () => {
    const now = monotonicMs();
    for (const c of clients.values()) {
      if (now - c.lastHeard > CLIENT_IDLE_TIMEOUT_MS) {
        log.info({ event: 'client-gone', key: c.wgKey.toString('base64') }, 'relay client silent: forgotten');
        forget(c);
      }
    }
    const wall = Date.now();
    for (const [k, v] of lastTimestamp) if (wall - v.at > 2 * MAX_CLOCK_SKEW_MS) lastTimestamp.delete(k);
  };
  const sweeper = setInterval(sweep, SWEEP_INTERVAL_MS);
  sweeper.unref();

  const udpPort = udp?.address().port ?? 0;
  log.info({ event: 'relay-listening', udpPort, stunSecondPort: stun2?.address().port, tcp: Boolean(opts.tcpServer) }, 'relay listening');

  let stopped: Promise<void> | undefined;
  return {
    udpPort,
    stunSecondPort: stun2?.address().port ?? 0,
    stats: () => {
      let tcp = 0;
      for (const c of clients.values()) if (c.transport.kind === 'tcp') tcp++;
      return { clients: clients.size, udpClients: clients.size - tcp, tcpClients: tcp, forwardedPackets: counters.forwardedPackets,
        forwardedBytes: counters.forwardedBytes, stunAnswered: counters.stunAnswered, dropped: { ...counters.dropped } };
    },
    stop: () => (stopped ??= (async () => {
      clearInterval(sweeper);
      opts.tcpServer?.off('upgrade', onUpgrade);
      for (const conn of tcpConns) conn.socket.destroy();
      clients.clear();
      udpClients.clear();
      await Promise.all([udp, stun2].map((s) => s && new Promise<void>((resolve) => s.close(() => resolve()))));
    })()),
  };
}
