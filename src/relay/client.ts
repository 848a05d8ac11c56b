import { randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { readFileSync } from 'node:fs';
import { request as httpRequest, type ClientRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { AgentVpnError } from '../errors.js';
import type { Identity } from '../identity/identity.js';
import { parseAddress } from '../ip/prefix.js';
import { monotonicMs } from '../util/token-bucket.js';
import { CHALLENGE_REUSE_MS } from './challenge.js';
import { relayNameHash } from './relay-name.js';
import {
  ACK_PEER_ADDRESS, BACKOFF_MAX_MS, BACKOFF_MIN_MS, DEFAULT_UDP_TIMEOUT_MS, FRAME_CHALLENGE, FRAME_HELLO_ACK, FRAME_NOTICE, FRAME_PEER_ADDRESS, FRAME_RECV, HELLO_RETRY_MS,
  MAX_PEER_ADDRESS_QUERIES, PEER_ADDRESS_TIMEOUT_MS, QUERY_ID_SIZE,
  KEEPALIVE_ACK_TIMEOUT_MS, KEEPALIVE_FRAME, KEEPALIVE_INTERVAL_MS, KEY_SIZE, MAX_PACKET_SIZE, NOTICE_BAD_SIGNATURE, NOTICE_BAD_VERSION, NOTICE_NOT_ALLOWED,
  NOTICE_NOT_REGISTERED, NOTICE_PEER_NOT_HERE, NOTICE_SIZE, NOTICE_STALE_TIMESTAMP, NOTICE_WRONG_RELAY, PACKET_HEADER_SIZE, RELAY_VERSION, SILENT_LOG, TCP_HELLO_TIMEOUT_MS, UDP_RETRY_MS,
  encodeChallengeRequest, encodeHello, encodePeerAddressRequest, encodeSend, isRelayFrame, parseChallenge, parseHelloAck, parseHostPort, parsePeerAddress,
  type RelayInfo, type RelayLog,
} from './protocol.js';
import { FrameReader, LENGTH_SIZE, MAX_TCP_BACKLOG_BYTES, UPGRADE_PROTOCOL, encodeTcpFrame } from './tcp.js';
import { ENDPOINT_SIZE, makeEndpoint } from '../net/endpoint.js';

export type { RelayInfo } from './protocol.js';

export type RelayState = 'connecting' | 'udp' | 'tcp' | 'down';

export interface RelayClientOptions {
  /** The relay to dial; its `name` (none: the empty name) is what our hellos are bound to, so only a relay of that name takes them. */
  relay: RelayInfo;
  identity: Identity;
  /** Send a datagram on the agent's shared UDP socket. */
  sendUdp(buf: Buffer, endpoint20: Buffer): void;
  /** A packet another agent sent us through the relay (both buffers valid for this call only: copy what you keep). */
  onPacket(srcWgKey: Buffer, packet: Buffer): void;
  /** The relay says no agent with this key is connected to it (rate-limited by the relay). */
  onPeerNotHere?(dstWgKey: Buffer): void;
  /** CA certificate (PEM) for an https:// TCP fallback with a private CA. */
  caFile?: string;
  log?: RelayLog;
  /** Switch to TCP when no UDP hello is acked for this long (default 3000). */
  udpTimeoutMs?: number;
  /** While on TCP, probe UDP this often (default 30 s). */
  udpRetryMs?: number;
}

/** A hello exchange over UDP that has not been acked yet. */
interface UdpAttempt {
  /** Timestamp of its first hello: acks of any of its retransmissions count. */
  since: number;
  deadline: number;
  timer: NodeJS.Timeout | null;
  /** Hellos sent at once on a challenge's arrival (the rest wait for the retransmission timer). */
  prompt: number;
  /** A refusal came over UDP during it (logged once). */
  refused?: boolean;
}

/** A challenge the relay sent us over one transport, and when (monotonic ms). */
interface HeldChallenge {
  bytes: Buffer;
  at: number;
}

interface TcpLink {
  req: ClientRequest;
  socket: Duplex | null;
  reader: FrameReader;
  helloSince: number;
  acked: boolean;
  timer: NodeJS.Timeout | null;
  /** The relay's challenge for this connection (bound to its address and port). */
  challenge: HeldChallenge | null;
  /** A challenge request is out: its answer is said hello with (others are ignored, so a relay cannot make us sign in a loop). */
  wantsHello: boolean;
}

const timer = (ms: number, fn: () => void): NodeJS.Timeout => setTimeout(fn, ms).unref();

/**
 * Challenges answered with a hello at once, per UDP attempt: the honest exchange needs one or two
 * (request, or a refused challenge), and someone spoofing the relay's address cannot make us sign
 * a hello per datagram they send; past it, the once-a-second retransmission uses the latest one.
 */
const PROMPT_HELLOS_PER_ATTEMPT = 3;

function fresh(c: HeldChallenge | null): c is HeldChallenge {
  return c !== null && monotonicMs() - c.at < CHALLENGE_REUSE_MS;
}

/**
 * An agent's connection to one relay. UDP first, over the agent's own socket (challenge request →
 * challenge, hello signed over it → ack, then keepalives); when UDP gets no ack it falls back to
 * TCP (HTTP upgrade, the same exchange on the stream), probes UDP again every 30 s while on TCP
 * (a challenge request: its answer proves UDP works, and the hello that follows reuses it), and
 * reconnects with backoff when both fail. A challenge is reused for retransmissions and re-hellos
 * on the same path for CHALLENGE_REUSE_MS, and asked again whenever our address may have changed.
 * Every hello is signed for the relay's advertised name (relay-name.ts): no other relay takes it.
 */
export class RelayClient {
  readonly name: string;
  /** The hash of the relay name our hellos are signed for (relay-name.ts): the advertised name, or "" for a relay advertised without one. */
  private readonly relayName: Buffer;
  private currentState: RelayState = 'down';
  private ep: Buffer = Buffer.alloc(ENDPOINT_SIZE);
  private readonly udpHost: string;
  private readonly udpPort: number;
  private readonly tcpUrl: URL | null;
  private readonly ca: Buffer | undefined;
  private readonly log: RelayLog;
  private readonly udpTimeoutMs: number;
  private readonly udpRetryMs: number;
  private stopped = true;
  private lastTimestamp = 0;
  private lastHeard = 0;
  private backoff = BACKOFF_MIN_MS;
  private attempt: UdpAttempt | null = null;
  private tcp: TcpLink | null = null;
  /** The relay's challenge for our UDP address (as the relay sees it): cleared when that address may have changed. */
  private udpChallenge: HeldChallenge | null = null;
  /** While on TCP: a challenge request went out over UDP; its answer shows UDP works again. */
  private probing = false;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private ackTimer: NodeJS.Timeout | null = null;
  private udpRetryTimer: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  /** The flags of the relay's last HELLO_ACK: which features of our version it has. */
  private ackFlags = 0;
  /** Peer-address queries under way, by query id (hex). */
  private readonly queries = new Map<string, { wgKey: Buffer; claimed: Buffer; resolve: (confirmed: boolean) => void; timer: NodeJS.Timeout }>();

  constructor(private readonly opts: RelayClientOptions) {
    this.name = opts.relay.name ?? opts.relay.udp;
    this.relayName = relayNameHash(opts.relay.name ?? '');
    ({ host: this.udpHost, port: this.udpPort } = parseHostPort(opts.relay.udp, 'relay address'));
    const literal = parseAddress(this.udpHost);
    if (literal) this.ep = makeEndpoint(literal, this.udpPort);
    this.tcpUrl = null;
    if (opts.relay.tcp) {
      try {
        this.tcpUrl = new URL(opts.relay.tcp);
      } catch {
        // checked below
      }
      if (!this.tcpUrl || !['http:', 'https:'].includes(this.tcpUrl.protocol)) {
        throw new AgentVpnError('BAD_RELAY', `invalid relay TCP URL "${opts.relay.tcp}"`, 'give http(s)://host:port/v1/relay');
      }
    }
    if (opts.caFile) {
      try {
        this.ca = readFileSync(opts.caFile);
      } catch (e) {
        throw new AgentVpnError('CA_UNREADABLE', `cannot read CA file ${opts.caFile}: ${(e as Error).message}`, 'check the --ca path and its permissions', { cause: e });
      }
    }
    this.log = opts.log ?? SILENT_LOG;
    this.udpTimeoutMs = opts.udpTimeoutMs ?? DEFAULT_UDP_TIMEOUT_MS;
    this.udpRetryMs = opts.udpRetryMs ?? UDP_RETRY_MS;
  }

  get state(): RelayState {
    return this.currentState;
  }

  /** The relay's UDP endpoint (20 bytes; all zero until its name is resolved). */
  get endpoint(): Buffer {
    return this.ep;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.connect();
  }

  /** After a key rotation: the relay knows us by our current key, so say hello again with it. */
  setIdentity(identity: Identity): void {
    this.opts.identity = identity;
    if (this.stopped) return;
    this.stop();
    this.start();
  }

  stop(): void {
    this.stopped = true;
    for (const q of [...this.queries.values()]) q.resolve(false);
    this.resetLinks();
    this.setState('down');
  }

  /** Feed a datagram that came from the relay's endpoint; returns true if it was a relay frame. Handled at once: no copy. */
  handleDatagram(buf: Buffer, off: number, len: number): boolean {
    if (!isRelayFrame(buf, off, len)) return false;
    this.onFrame(buf.subarray(off, off + len), 'udp');
    return true;
  }

  /** Send an opaque packet to the agent with this WireGuard key; false if the relay is not connected. */
  send(dstWgKey: Uint8Array, packet: Uint8Array): boolean {
    if (dstWgKey.length !== KEY_SIZE || packet.length > MAX_PACKET_SIZE) return false;
    try {
      if (this.currentState === 'udp') {
        this.opts.sendUdp(encodeSend(dstWgKey, packet), this.ep);
        return true;
      }
      const socket = this.tcp?.socket;
      if (this.currentState === 'tcp' && socket && socket.writable && socket.writableLength < MAX_TCP_BACKLOG_BYTES) {
        const buf = Buffer.allocUnsafe(LENGTH_SIZE + PACKET_HEADER_SIZE + packet.length);
        buf.writeUInt16BE(PACKET_HEADER_SIZE + packet.length, 0);
        socket.write(encodeSend(dstWgKey, packet, buf, LENGTH_SIZE));
        return true;
      }
    } catch (err) {
      this.log.debug({ err, relay: this.name }, 'relay send failed');
    }
    return false;
  }

  /**
   * Whether the relay sees the session of the agent with this WireGuard key come from the IP of
   * `claimed` (a 20-byte endpoint; its port is not asked about). False also when unknown: not on
   * this relay, not in our network, a relay without the feature, not connected, no answer in
   * PEER_ADDRESS_TIMEOUT_MS, too many queries under way.
   */
  confirmsPeerAddress(wgKey: Uint8Array, claimed: Uint8Array): Promise<boolean> {
    const via = this.currentState;
    if ((via !== 'udp' && via !== 'tcp') || !(this.ackFlags & ACK_PEER_ADDRESS) || wgKey.length !== KEY_SIZE || claimed.length < 16 || claimed.subarray(0, 16).every((b) => b === 0) || this.queries.size >= MAX_PEER_ADDRESS_QUERIES) return Promise.resolve(false);
    const id = randomBytes(QUERY_ID_SIZE);
    const frame = encodePeerAddressRequest(id, wgKey, claimed);
    return new Promise((resolve) => {
      const key = id.toString('hex');
      const done = (confirmed: boolean) => {
        const q = this.queries.get(key);
        if (!q) return;
        clearTimeout(q.timer);
        this.queries.delete(key);
        resolve(confirmed);
      };
      this.queries.set(key, { wgKey: Buffer.from(wgKey), claimed: Buffer.from(claimed.subarray(0, 16)), resolve: done, timer: timer(PEER_ADDRESS_TIMEOUT_MS, () => done(false)) });
      if (via === 'udp') this.sendUdp(frame, 'relay peer-address query not sent');
      else this.tcp?.socket?.write(encodeTcpFrame(frame));
    });
  }

  /** An answer to one of our queries (unasked ones are ignored): its address, or null for zeros. */
  private onPeerAddress(frame: Buffer): void {
    const a = parsePeerAddress(frame);
    const q = a && this.queries.get(a.queryId.toString('hex'));
    if (!a || !q || !q.wgKey.equals(a.wgKey)) return;
    q.resolve(a.endpoint.subarray(0, 16).equals(q.claimed));
  }

  // ---- connecting ------------------------------------------------------------------------------

  private setState(s: RelayState): void {
    if (s === this.currentState) return;
    this.log.info({ relay: this.name, event: 'relay-state', from: this.currentState, to: s }, `relay ${this.name}: ${s}`);
    this.currentState = s;
  }

  private nextTimestamp(): number {
    return (this.lastTimestamp = Math.max(Date.now(), this.lastTimestamp + 1));
  }

  /** A fresh start: resolve the relay's name, then UDP (which falls back to TCP). */
  private async connect(): Promise<void> {
    this.resetLinks();
    this.setState('connecting');
    if (isIP(this.udpHost) === 0) {
      try {
        const { address } = await lookup(this.udpHost);
        if (this.stopped) return;
        this.ep = makeEndpoint(parseAddress(address)!, this.udpPort);
      } catch (err) {
        this.log.warn({ err, relay: this.name }, 'cannot resolve the relay name');
      }
    }
    if (!this.stopped) this.tryUdp();
  }

  /** Hello over UDP until acked or the UDP timeout; the current transport keeps working meanwhile. */
  private tryUdp(): void {
    if (this.attempt || this.stopped) return;
    if (this.ep.every((b) => b === 0)) return this.udpFailed();
    const attempt: UdpAttempt = { since: this.nextTimestamp(), deadline: monotonicMs() + this.udpTimeoutMs, timer: null, prompt: 0 };
    this.attempt = attempt;
    const send = (ts?: number) => {
      if (this.attempt !== attempt) return;
      const left = attempt.deadline - monotonicMs();
      if (left <= 0) return this.udpFailed();
      this.sendUdpHello(ts);
      attempt.timer = timer(Math.min(HELLO_RETRY_MS, left), () => send());
    };
    send(attempt.since);
  }

  /** A hello over the challenge we hold for UDP, or, without a fresh one, a challenge request. */
  private sendUdpHello(ts = this.nextTimestamp()): void {
    const c = this.udpChallenge;
    this.sendUdp(fresh(c) ? encodeHello(this.opts.identity, ts, 0, this.relayName, c.bytes) : encodeChallengeRequest(), 'relay hello not sent');
  }

  private sendUdp(frame: Buffer, what: string): void {
    try {
      this.opts.sendUdp(frame, this.ep);
    } catch (err) {
      this.log.debug({ err, relay: this.name }, what);
    }
  }

  private udpFailed(): void {
    this.clearAttempt();
    if (this.stopped) return;
    if (this.tcp?.acked) {
      // Still on TCP: the relay may have moved us to UDP on a hello whose ack was lost; claim TCP again.
      this.sendTcpHello(this.tcp);
      return;
    }
    this.setState('connecting');
    if (this.tcp) return; // TCP is being set up
    if (this.tcpUrl) {
      this.log.info({ relay: this.name, event: 'relay-udp-blocked' }, `relay ${this.name}: no answer over UDP, trying TCP`);
      this.openTcp();
    } else {
      this.reconnectLater();
    }
  }

  private openTcp(): void {
    const url = this.tcpUrl!;
    const https = url.protocol === 'https:';
    const req = (https ? httpsRequest : httpRequest)({
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: url.port || (https ? 443 : 80),
      path: url.pathname + url.search,
      method: 'GET',
      headers: { connection: 'Upgrade', upgrade: UPGRADE_PROTOCOL },
      agent: false,
      ca: this.ca,
      timeout: TCP_HELLO_TIMEOUT_MS,
    });
    const link: TcpLink = {
      req, socket: null, helloSince: 0, acked: false, timer: null, challenge: null, wantsHello: false,
      reader: new FrameReader((frame) => this.onFrame(frame, 'tcp'), () => this.tcpFailed(link, 'bad framing from the relay')),
    };
    this.tcp = link;
    req.on('upgrade', (_res, socket: Duplex, head: Buffer) => {
      if (this.tcp !== link) return void socket.destroy();
      link.socket = socket;
      (socket as Socket).setNoDelay?.(true);
      (socket as Socket).setTimeout?.(0); // the connect timeout; keepalives watch the live connection
      socket.on('data', (chunk: Buffer) => link.reader.push(chunk));
      socket.on('error', (err) => this.tcpFailed(link, err.message));
      socket.on('close', () => this.tcpFailed(link, 'connection closed'));
      if (head.length) link.reader.push(head);
      this.sendTcpHello(link);
      link.timer = timer(TCP_HELLO_TIMEOUT_MS, () => link.acked || this.tcpFailed(link, 'no hello ack'));
    });
    req.on('response', (res) => {
      res.resume();
      this.tcpFailed(link, `HTTP ${res.statusCode} instead of an upgrade`);
    });
    req.on('timeout', () => link.socket || req.destroy(new Error('timed out')));
    req.on('error', (err) => this.tcpFailed(link, err.message));
    req.end();
  }

  /** A hello over the connection's challenge, or, without a fresh one, a challenge request (its answer brings the hello). */
  private sendTcpHello(link: TcpLink): void {
    if (!link.socket) return;
    const c = link.challenge;
    link.wantsHello = !fresh(c);
    if (!fresh(c)) return void link.socket.write(encodeTcpFrame(encodeChallengeRequest()));
    const ts = this.nextTimestamp();
    if (!link.acked) link.helloSince = ts;
    link.socket.write(encodeTcpFrame(encodeHello(this.opts.identity, ts, 0, this.relayName, c.bytes)));
  }

  private tcpFailed(link: TcpLink, why: string): void {
    if (this.tcp !== link) return;
    this.log.info({ relay: this.name, event: 'relay-tcp-down', why }, `relay ${this.name}: TCP ${why}`);
    this.closeTcp();
    if (this.stopped || this.currentState === 'udp') return;
    this.setState('connecting');
    if (!this.attempt) this.reconnectLater(); // else the running UDP attempt decides
  }

  private closeTcp(): void {
    const link = this.tcp;
    if (!link) return;
    this.tcp = null;
    if (link.timer) clearTimeout(link.timer);
    link.reader.close();
    link.socket?.destroy();
    link.req.destroy();
  }

  private reconnectLater(): void {
    if (this.stopped) return;
    this.resetLinks();
    this.setState('down');
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    this.log.info({ relay: this.name, event: 'relay-retry', inMs: delay },
      `relay ${this.name}: unreachable (down, blocked, or a relay older than relay protocol ${RELAY_VERSION}: those answer nothing), retrying in ${delay} ms`);
    this.reconnectTimer = timer(delay, () => void this.connect());
  }

  private clearAttempt(): void {
    if (this.attempt?.timer) clearTimeout(this.attempt.timer);
    this.attempt = null;
  }

  private resetLinks(): void {
    this.clearAttempt();
    this.closeTcp();
    for (const t of [this.keepaliveTimer, this.ackTimer, this.udpRetryTimer, this.reconnectTimer]) if (t) clearTimeout(t);
    this.keepaliveTimer = this.ackTimer = this.udpRetryTimer = this.reconnectTimer = null;
    this.probing = false;
    this.udpChallenge = null;
  }

  private established(via: 'udp' | 'tcp'): void {
    this.backoff = BACKOFF_MIN_MS;
    if (via === 'udp') {
      this.closeTcp();
      if (this.udpRetryTimer) clearInterval(this.udpRetryTimer);
      this.udpRetryTimer = null;
    } else if (!this.udpRetryTimer) {
      this.udpRetryTimer = setInterval(() => this.probeUdp(), this.udpRetryMs).unref();
    }
    this.setState(via);
    if (!this.keepaliveTimer) this.keepaliveTimer = setInterval(() => this.keepalive(), KEEPALIVE_INTERVAL_MS).unref();
  }

  /** While on TCP: a challenge request over UDP; its answer (one round trip) starts a UDP hello exchange that uses it. */
  private probeUdp(): void {
    if (this.currentState !== 'tcp' || this.attempt || this.ep.every((b) => b === 0)) return;
    this.probing = true;
    this.sendUdp(encodeChallengeRequest(), 'relay UDP probe not sent');
  }

  private keepalive(): void {
    const via = this.currentState;
    if (via !== 'udp' && via !== 'tcp') return;
    const sentAt = monotonicMs();
    try {
      if (via === 'udp') this.opts.sendUdp(KEEPALIVE_FRAME, this.ep);
      else this.tcp?.socket?.write(encodeTcpFrame(KEEPALIVE_FRAME));
    } catch (err) {
      this.log.debug({ err, relay: this.name }, 'relay keepalive not sent');
    }
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = timer(KEEPALIVE_ACK_TIMEOUT_MS, () => {
      this.ackTimer = null;
      if (this.lastHeard >= sentAt || this.currentState !== via) return;
      this.log.info({ relay: this.name, event: 'relay-silent', via }, `relay ${this.name}: keepalive unanswered over ${via}`);
      if (via === 'udp') {
        this.udpChallenge = null; // our NAT mapping may have changed: the challenge is for the old one
        this.tryUdp();
      } else {
        void this.connect();
      }
    });
  }

  // ---- receiving ---------------------------------------------------------------------------

  private onFrame(frame: Buffer, via: 'udp' | 'tcp'): void {
    if (this.stopped) return;
    this.lastHeard = monotonicMs();
    try {
      switch (frame[0]) {
        case FRAME_RECV:
          if (frame.length >= PACKET_HEADER_SIZE) this.opts.onPacket(frame.subarray(1, PACKET_HEADER_SIZE), frame.subarray(PACKET_HEADER_SIZE));
          return;
        case FRAME_HELLO_ACK:
          return this.onAck(frame, via);
        case FRAME_CHALLENGE: {
          const c = parseChallenge(frame);
          if (c) this.onChallenge(c, via);
          return;
        }
        case FRAME_NOTICE:
          if (frame.length === NOTICE_SIZE) this.onNotice(frame[1], frame.subarray(2), via);
          return;
        case FRAME_PEER_ADDRESS:
          return this.onPeerAddress(frame);
        default:
          return; // keepalive acks only refresh lastHeard; anything else is ignored
      }
    } catch (err) {
      this.log.error({ err, relay: this.name }, 'handling a relay frame failed');
    }
  }

  /**
   * A challenge, to our request or to a hello whose challenge the relay did not take (expired, or
   * made for an address we no longer have): say hello with it.
   */
  private onChallenge(challenge: Buffer, via: 'udp' | 'tcp'): void {
    const held = { bytes: Buffer.from(challenge), at: monotonicMs() };
    if (via === 'tcp') {
      // On one connection our address cannot change, so only the answer to our request is needed.
      if (!this.tcp?.socket || !this.tcp.wantsHello) return;
      this.tcp.challenge = held;
      return this.sendTcpHello(this.tcp);
    }
    this.udpChallenge = held;
    if (this.attempt) {
      if (this.attempt.prompt++ < PROMPT_HELLOS_PER_ATTEMPT) this.sendUdpHello();
    } else if (this.probing && this.currentState === 'tcp') {
      this.probing = false;
      this.log.info({ relay: this.name, event: 'relay-udp-back' }, `relay ${this.name}: UDP answers again, moving off TCP`);
      this.tryUdp();
    }
  }

  private onAck(frame: Buffer, via: 'udp' | 'tcp'): void {
    const ack = parseHelloAck(frame);
    if (!ack || !ack.wgKey.equals(this.opts.identity.wgPublicKey)) return;
    this.ackFlags = ack.flags;
    if (via === 'udp') {
      if (!this.attempt || ack.timestamp < this.attempt.since) return;
      this.clearAttempt();
      this.established('udp');
    } else if (this.tcp && this.tcp.socket && ack.timestamp >= this.tcp.helloSince) {
      this.tcp.acked = true;
      if (this.currentState !== 'udp') this.established('tcp');
    }
  }

  /** What a refusal notice means, said so the operator knows what to change (`first`: the key field's first byte). */
  private refusalReason(code: number, first: number): string {
    const named = this.opts.relay.name;
    switch (code) {
      case NOTICE_NOT_ALLOWED:
        return 'this agent is not allowed on it';
      case NOTICE_BAD_SIGNATURE:
        return 'bad signature';
      case NOTICE_BAD_VERSION:
        return `it speaks relay protocol version ${first}, this agent ${RELAY_VERSION}: upgrade the older one` +
          (first < RELAY_VERSION ? ` (a version ${RELAY_VERSION} relay takes hellos for its --name, the name the registry advertises it under)` : '');
      case NOTICE_WRONG_RELAY:
        return (named ? `it is not named "${named}" (it has another --name, or none)` : 'it has a --name, and the registry advertises it without one') +
          ": a relay's --name must be the name the registry advertises it under";
      default:
        return `code ${code}`;
    }
  }

  private onNotice(code: number, key: Buffer, via: 'udp' | 'tcp'): void {
    if (code === NOTICE_PEER_NOT_HERE) {
      this.opts.onPeerNotHere?.(Buffer.from(key));
    } else if (code === NOTICE_NOT_REGISTERED) {
      // The relay forgot us (restart, long silence) or our NAT mapping changed: hello again, with a new challenge.
      if (via === 'udp' && this.currentState === 'udp') {
        this.udpChallenge = null;
        this.tryUdp();
      } else if (via === 'tcp' && this.tcp?.acked) {
        this.sendTcpHello(this.tcp);
      }
    } else if (code === NOTICE_STALE_TIMESTAMP) {
      // Also the answer to a retransmitted hello overtaken by a newer one: the attempt's timeout decides.
      this.log.debug({ relay: this.name, event: 'relay-stale-hello', via }, `relay ${this.name}: hello timestamp refused (host clock off, or an old hello)`);
    } else if (via === 'tcp') {
      this.log.warn({ relay: this.name, event: 'relay-refused', code, via }, `relay ${this.name} refused our hello: ${this.refusalReason(code, key[0])}`);
      if (this.currentState === 'connecting') this.reconnectLater();
    } else if (this.attempt && !this.attempt.refused) {
      // Over UDP a notice proves nothing about its sender (anyone can forge the relay's address and
      // keep us off it): it is logged, once per attempt, and the attempt's own timeout decides (then TCP).
      this.attempt.refused = true;
      this.log.warn({ relay: this.name, event: 'relay-refused', code, via }, `relay ${this.name} refused our hello: ${this.refusalReason(code, key[0])}`);
    }
  }
}
