import dgram, { type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { AgentVpnError } from '../errors.js';
import { parseAddress } from '../ip/prefix.js';
import { answerBindingRequest } from '../net/stun.js';
import { ADDR_SIZE } from '../tun/native.js';
import { formatEndpoint, makeEndpoint, sameEndpoint, sourceKey } from '../net/endpoint.js';
import { RoundShares } from './fair-share.js';
import { ChallengeMinter } from './challenge.js';
import { acceptedNameHashes } from './relay-name.js';
import { HelloGate, type AllowHook, type HelloSource, type Networks, type SessionOfKey } from './hello-gate.js';
import {
  CHALLENGE_BURST, CHALLENGE_BURST_PER_SOURCE, CHALLENGE_RATE, CHALLENGE_RATE_PER_SOURCE, DEFAULT_LIMITS, MAX_SESSIONS, MAX_TRACKED_SOURCES, MAX_TCP_CONNECTIONS_PER_SOURCE, NOTICE_RATE_PER_CLIENT, NOTICE_RATE_PER_SOURCE, NOTICE_RATE_UNKNOWN,
  PEER_ADDRESS_RATE_PER_CLIENT, STUN_BURST, STUN_BURST_MEMBERS, STUN_BURST_PER_SOURCE, STUN_RATE, STUN_RATE_MEMBERS, STUN_RATE_PER_SOURCE,
  validateLimits, type RelayLimits,
} from './limits.js';
import {
  CHALLENGE_FRAME_SIZE, CLIENT_IDLE_TIMEOUT_MS, FRAME_CHALLENGE, FRAME_CHALLENGE_REQUEST, FRAME_HELLO, FRAME_KEEPALIVE, FRAME_PEER_ADDRESS_REQUEST, FRAME_RECV, FRAME_SEND,
  KEEPALIVE_ACK_FRAME, KEY_SIZE, MAX_FRAME_SIZE, NOTICE_NOT_REGISTERED, NOTICE_PEER_NOT_HERE, NOTICE_SIZE, NOTICE_WRONG_RELAY, PACKET_HEADER_SIZE, RELAY_ACK_FLAGS, RELAY_VERSION,
  SILENT_LOG, SWEEP_INTERVAL_MS, TCP_HELLO_TIMEOUT_MS, answerPeerAddress, encodeHelloAck, encodeNotice, encodeVersionNotice, isChallengeRequest, parseHello,
  parsePeerAddress, versionOf, wgKeyOf, type RelayLog,
} from './protocol.js';
import { FrameReader, MAX_TCP_BACKLOG_BYTES, UPGRADE_PATH, UPGRADE_PROTOCOL, UPGRADE_RESPONSE, encodeTcpFrame } from './tcp.js';
import { READ_BATCH, RelayUdpSocket } from './udp.js';
import { SourceBuckets, TokenBucket, monotonicMs } from '../util/token-bucket.js';

export type { RelayLimits } from './limits.js';
export type { RelayLog } from './protocol.js';
export type { AllowHook, Networks } from './hello-gate.js';

export interface RelayOptions {
  /** UDP socket for relay frames and STUN; port 0 picks a free one. Without it: TCP only. */
  udp?: { host: string; port: number };
  /** Also answer STUN on UDP port+1, so one server lets an agent see whether its NAT mapping varies by destination. */
  stunSecondPort?: boolean;
  /** An HTTP(S) server to take the TCP fallback from (upgrade on /v1/relay). */
  tcpServer?: HttpServer;
  /** Told of each connection from tcpServer on which the relay accepted a hello (the connection caps then count it as busy). */
  onTcpSession?: (socket: Duplex) => void;
  /**
   * Who may use the relay and in which networks, by Ed25519 public key; frames pass only between
   * sessions that share a network. Default: anyone with a valid hello, all in one network.
   */
  allow?: AllowHook;
  /**
   * The names the registry advertises this relay under (relay-name.ts): it takes only hellos
   * signed for one of them. None: it is unnamed and takes hellos for the empty name only.
   */
  names?: readonly string[];
  limits?: RelayLimits;
  log?: RelayLog;
}

/** Why frames were dropped; counted in stats().dropped. */
export type DropReason =
  | 'garbage' | 'oversized' | 'bad-signature' | 'stale-timestamp' | 'not-allowed' | 'hello-rate' | 'hello-source-rate' | 'not-registered'
  | 'relay-full' | 'fair-share' | 'peer-not-here' | 'other-network' | 'rate-limit' | 'byte-limit' | 'destination-busy' | 'tcp-backlog'
  | 'tcp-connections' | 'send-error' | 'bad-challenge' | 'challenge-rate' | 'challenge-source-rate' | 'bad-version' | 'peer-address-rate'
  | 'wrong-relay' | 'stun-rate' | 'stun-source-rate';

export interface RelayStats {
  clients: number;
  udpClients: number;
  tcpClients: number;
  /** Sessions opened (a key registered that had none); with `clients`, how many came and went. */
  sessionsOpened: number;
  forwardedPackets: number;
  forwardedBytes: number;
  stunAnswered: number;
  /** Peer-address queries answered (with an address or with zeros). */
  peerAddressAnswered: number;
  /** Challenges sent (to requests, and to hellos whose challenge was not ours for their source). */
  challengesAnswered: number;
  /** Hello signatures checked (the costly step the budgets bound). */
  helloVerifications: number;
  dropped: Partial<Record<DropReason, number>>;
}

export interface RunningRelay {
  /** The UDP port relay frames and STUN are answered on (0 without UDP). */
  udpPort: number;
  /** The second STUN port (udpPort+1), or 0. */
  stunSecondPort: number;
  stop(): Promise<void>;
  stats(): RelayStats;
  /** Asks the allow hook again for every session now, not at the next sweep (a member was just removed). */
  recheck(): void;
}

/** Tries at finding two free consecutive UDP ports when the port is 0. */
const PORT_PAIR_ATTEMPTS = 20;
/**
 * Frames to one destination per send round (one sendmmsg): a burst of one destination cannot fill
 * the socket's send buffer and so push out other destinations' frames of the same round.
 */
const DESTINATION_FRAMES_PER_ROUND = 256;

/**
 * Where a client is: a UDP endpoint (20 bytes, the native layer's form), or its upgraded TCP
 * connection (`remote`: its far end in the same form, what its challenges are bound to).
 * `source` keys the per-source budgets (IPv4 address, IPv6 /64).
 */
type Transport = { kind: 'udp'; ep: Buffer; id: string; source: string } | { kind: 'tcp'; socket: Duplex; remote: Buffer; source: string };

/** A clear log line for hellos of another protocol version, or for another relay name, at most this often (a flood of them logs once a minute). */
const REFUSAL_LOG_INTERVAL_MS = 60_000;

class Client {
  lastHeard = monotonicMs();
  readonly packets: TokenBucket;
  readonly bytes: TokenBucket;
  readonly notices = new TokenBucket(NOTICE_RATE_PER_CLIENT, NOTICE_RATE_PER_CLIENT);
  readonly peerAddressAnswers = new TokenBucket(PEER_ADDRESS_RATE_PER_CLIENT, PEER_ADDRESS_RATE_PER_CLIENT);
  /** The send round (sendmmsg) the last UDP frame to this client was queued in, and how many in it. */
  private sendRound = -1;
  private sendRoundFrames = 0;

  constructor(
    readonly wgKey: Buffer,
    readonly id: string,
    readonly edPub: Buffer,
    readonly edId: string,
    public networks: Networks,
    public lastHelloTs: number,
    public transport: Transport,
    limits: RelayLimits,
  ) {
    this.packets = new TokenBucket(limits.packetsPerSecond, limits.burst.packets);
    this.bytes = new TokenBucket(limits.bytesPerSecond, limits.burst.bytes);
  }

  /** Room for one more frame to this client in send round `round` (at most DESTINATION_FRAMES_PER_ROUND). */
  takeSendSlot(round: number): boolean {
    if (this.sendRound !== round) {
      this.sendRound = round;
      this.sendRoundFrames = 0;
    }
    return ++this.sendRoundFrames <= DESTINATION_FRAMES_PER_ROUND;
  }
}

/** Per TCP connection: the client that said hello on it, if any. */
interface TcpConn {
  socket: Duplex;
  client: Client | null;
  /** A hello was accepted on it: the owner of tcpServer was told (onTcpSession), once. */
  held: boolean;
}

function sameTransport(a: Transport, b: Transport): boolean {
  return a.kind === 'udp' ? b.kind === 'udp' && a.id === b.id : b.kind === 'tcp' && a.socket === b.socket;
}

/** Whether two sessions may exchange frames: they share a network (nearly always exactly one each). */
function shareNetwork(a: Networks, b: Networks): boolean {
  if (a.length === 1 && b.length === 1) return a[0] === b[0];
  return a.some((n) => b.includes(n));
}

function bindUdp(host: string, port: number): Promise<UdpSocket> {
  const socket = dgram.createSocket({ type: isIP(host) === 6 ? 'udp6' : 'udp4' });
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

/**
 * The relay socket and, when asked, a STUN-only socket on the next port (node:dgram: it answers
 * only STUN, at a budget per source). Port 0: any free pair.
 */
async function bindSockets(host: string, port: number, second: boolean, onUnsent: (n: number) => void): Promise<[RelayUdpSocket, UdpSocket | null]> {
  for (let attempt = 0; ; attempt++) {
    const main = await RelayUdpSocket.open(host, port, onUnsent);
    if (!second) return [main, null];
    try {
      if (main.port === 65535) throw Object.assign(new Error('no port after 65535'), { code: 'EADDRINUSE' });
      return [main, await bindUdp(host, main.port + 1)];
    } catch (e) {
      main.close();
      if (port !== 0 || attempt >= PORT_PAIR_ATTEMPTS) throw e;
    }
  }
}

/** A TCP peer's address and port in the 20-byte endpoint form (all zeros when unparseable). */
function endpointOfText(address: string | undefined, port: number | undefined): Buffer {
  const ip = parseAddress((address ?? '').replace(/%.*$/, ''));
  return ip ? makeEndpoint(ip, port ?? 0) : Buffer.alloc(ADDR_SIZE);
}

/**
 * Starts a relay: it forwards opaque packets between agents addressed by WireGuard key, over UDP
 * and over TCP (HTTP upgrade), and answers STUN on its UDP port(s).
 */
export async function startRelay(opts: RelayOptions): Promise<RunningRelay> {
  const log = opts.log ?? SILENT_LOG;
  const limits = validateLimits(opts.limits ?? DEFAULT_LIMITS);
  const clients = new Map<string, Client>(); // by WireGuard key (latin1)
  const byEdKey = new Map<string, Client>(); // by Ed25519 key (latin1)
  const udpClients = new Map<string, Client>(); // by endpoint address and port (latin1 of 18 bytes)
  const tcpConns = new Set<TcpConn>();
  const tcpPerSource = new Map<string, number>(); // open TCP fallback connections by source key
  const challenges = new ChallengeMinter();
  const names = opts.names ?? [];
  const gate = new HelloGate(opts.allow, challenges, acceptedNameHashes(names), log);
  const challengesPerSource = new SourceBuckets(CHALLENGE_RATE_PER_SOURCE, CHALLENGE_BURST_PER_SOURCE, MAX_TRACKED_SOURCES);
  const challengesTotal = new TokenBucket(CHALLENGE_RATE, CHALLENGE_BURST);
  /** Every challenge is minted into this one frame (sending copies it). */
  const challengeFrame = Buffer.alloc(CHALLENGE_FRAME_SIZE);
  challengeFrame[0] = FRAME_CHALLENGE;
  challengeFrame[1] = RELAY_VERSION;
  const versionRefusals = { loggedAt: -Infinity, since: 0 };
  const nameRefusals = { loggedAt: -Infinity, since: 0 };
  const shares = new RoundShares();
  const sourceNotices = new SourceBuckets(NOTICE_RATE_PER_SOURCE, NOTICE_RATE_PER_SOURCE, MAX_TRACKED_SOURCES);
  const unknownNotices = new TokenBucket(NOTICE_RATE_UNKNOWN, NOTICE_RATE_UNKNOWN);
  const stunAnswers = new SourceBuckets(STUN_RATE_PER_SOURCE, STUN_BURST_PER_SOURCE, MAX_TRACKED_SOURCES);
  const stunTotal = new TokenBucket(STUN_RATE, STUN_BURST);
  const stunMembersTotal = new TokenBucket(STUN_RATE_MEMBERS, STUN_BURST_MEMBERS);
  /**
   * Whether a STUN answer to `source` is within its budget, and within the total of strangers or
   * (from the endpoint of an agent with a session here: `member`) that of members: spoofed
   * strangers may drain theirs, never the one of the agents this relay serves. A refusal is counted.
   */
  const stunAllowed = (source: string, member: boolean): boolean => {
    const refused = !stunAnswers.take(source) ? 'stun-source-rate' : !(member ? stunMembersTotal : stunTotal).take() ? 'stun-rate' : null;
    if (refused) drop(refused);
    return refused === null;
  };
  const counters = { challengesAnswered: 0, sessionsOpened: 0, forwardedPackets: 0, forwardedBytes: 0, stunAnswered: 0, peerAddressAnswered: 0, dropped: {} as Partial<Record<DropReason, number>> };
  const drop = (reason: DropReason, n = 1) => void (counters.dropped[reason] = (counters.dropped[reason] ?? 0) + n);

  let udp: RelayUdpSocket | null = null;
  let stun2: UdpSocket | null = null;
  if (opts.udp) {
    try {
      [udp, stun2] = await bindSockets(opts.udp.host, opts.udp.port, opts.stunSecondPort ?? false, (n) => drop('send-error', n));
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const code = err.code ?? (err.cause as NodeJS.ErrnoException | undefined)?.code;
      throw new AgentVpnError('LISTEN_FAILED', `relay cannot bind UDP ${opts.udp.host}:${opts.udp.port}${opts.stunSecondPort ? ' (and the next port for STUN)' : ''}: ${err.message}`,
        code === 'EADDRINUSE' || code === 'UDP_PORT_IN_USE' ? 'another process uses that UDP port: pick another port' : 'check the listen address', { cause: e });
    }
  }

  const sendTo = (t: Transport, frame: Buffer) => {
    if (t.kind === 'udp') {
      udp!.send(frame, t.ep);
    } else if (t.socket.writableLength > MAX_TCP_BACKLOG_BYTES) {
      drop('tcp-backlog');
    } else {
      t.socket.write(encodeTcpFrame(frame));
    }
  };

  /** A notice to a source without a session: budgeted per source and in total (floods get few answers). */
  const noticeStranger = (t: Transport, notice: number | Buffer) => {
    if (sourceNotices.take(t.source) && unknownNotices.take()) sendTo(t, typeof notice === 'number' ? encodeNotice(notice) : notice);
  };

  /**
   * A fresh challenge for the transport's address: one MAC, nothing kept. Budgeted per source and
   * (over UDP) in total; but a transport that holds a session (`holder`) is answered on that client's own
   * budget, so someone spoofing its address (its NAT's, shared with others) cannot keep it from
   * saying hello again.
   */
  const sendChallenge = (t: Transport, holder: Client | null) => {
    if (holder) {
      if (!holder.notices.take()) return drop('challenge-source-rate');
    } else {
      if (!challengesPerSource.take(t.source)) return drop('challenge-source-rate');
      // The total bounds what forged UDP sources can make us send; a TCP source proved its address
      // in the handshake, so a spoofed flood spending the total does not keep TCP agents out.
      if (t.kind === 'udp' && !challengesTotal.take()) return drop('challenge-rate');
    }
    challenges.mint(challengeFrame, 2, t.kind === 'udp' ? t.ep : t.remote, 0, t.kind);
    counters.challengesAnswered++;
    sendTo(t, challengeFrame);
  };

  /**
   * A hello or challenge request of another protocol version: NOTICE BAD_VERSION (no larger than
   * what it answers, so shorter frames get none), and a log line saying who must upgrade.
   */
  const refuseVersion = (frame: Buffer, t: Transport) => {
    drop('bad-version');
    versionRefusals.since++;
    const now = monotonicMs();
    if (now - versionRefusals.loggedAt >= REFUSAL_LOG_INTERVAL_MS) {
      const remote = formatEndpoint(t.kind === 'udp' ? t.ep : t.remote);
      log.warn({ event: 'relay-bad-version', version: frame[1], speaks: RELAY_VERSION, remote, refused: versionRefusals.since },
        `relay: refused a hello of relay protocol version ${frame[1]} from ${remote} (${versionRefusals.since} in the last minute); this relay speaks version ${RELAY_VERSION}: upgrade that agent (version 3 hellos name the relay they are for; it takes no older ones)`);
      versionRefusals.loggedAt = now;
      versionRefusals.since = 0;
    }
    if (frame.length >= NOTICE_SIZE) noticeStranger(t, encodeVersionNotice());
  };

  /**
   * A hello signed for another relay name: refused before any other check, counted, and logged at
   * most once a minute (a relay whose --name differs from the registry's name for it refuses
   * everyone). The notice goes only to a source its challenge proves (no reflection off spoofed hellos).
   */
  const refuseName = (t: Transport, sourceProven: boolean) => {
    drop('wrong-relay');
    nameRefusals.since++;
    const now = monotonicMs();
    if (now - nameRefusals.loggedAt >= REFUSAL_LOG_INTERVAL_MS) {
      const remote = formatEndpoint(t.kind === 'udp' ? t.ep : t.remote);
      const ours = names.length ? `named ${names.map((n) => `"${n}"`).join(', ')}` : 'unnamed (it takes hellos for the empty name only)';
      log.warn({ event: 'relay-wrong-name', remote, names, refused: nameRefusals.since },
        `relay: refused a hello for another relay's name from ${remote} (${nameRefusals.since} in the last minute); this relay is ${ours}: ` +
        'if agents are meant to reach it, give `agentvpn relay --name` the name the registry advertises it under (--relay-peer NAME=…)');
      nameRefusals.loggedAt = now;
      nameRefusals.since = 0;
    }
    if (sourceProven) noticeStranger(t, NOTICE_WRONG_RELAY);
  };

  const forget = (c: Client) => {
    if (clients.get(c.id) === c) clients.delete(c.id);
    if (byEdKey.get(c.edId) === c) byEdKey.delete(c.edId);
    gate.remember(c.edId, c.lastHelloTs);
    const t = c.transport;
    if (t.kind === 'udp') {
      if (udpClients.get(t.id) === c) udpClients.delete(t.id);
    } else {
      t.socket.destroy();
    }
  };

  /** A transport to keep: UDP endpoints of a round are views of the read buffers, so they are copied. */
  const owned = (t: Transport): Transport => (t.kind === 'udp' ? { ...t, ep: Buffer.from(t.ep) } : t);

  /** Points the session of this key at a transport (new client, new address, or UDP⇄TCP). */
  const register = (edPub: Buffer, edId: string, networks: Networks, ts: number, via: Transport, conn: TcpConn | null): Client => {
    const t = owned(via);
    if (t.kind === 'udp') {
      const other = udpClients.get(t.id);
      if (other && other.edId !== edId) forget(other); // an old mapping reused by a new agent
    }
    let c = byEdKey.get(edId);
    if (!c) {
      const wgKey = wgKeyOf(edPub);
      c = new Client(wgKey, wgKey.toString('latin1'), Buffer.from(edPub), edId, networks, ts, t, limits);
      clients.set(c.id, c);
      byEdKey.set(edId, c);
      counters.sessionsOpened++;
      log.info({ event: 'client', key: wgKey.toString('base64'), via: t.kind, networks, remote: t.kind === 'udp' ? formatEndpoint(t.ep) : undefined }, 'relay client registered');
    } else {
      const old = c.transport;
      if (old.kind === 'udp' && (t.kind !== 'udp' || old.id !== t.id)) udpClients.delete(old.id);
      if (old.kind === 'tcp' && (t.kind !== 'tcp' || old.socket !== t.socket)) {
        for (const k of tcpConns) if (k.socket === old.socket) k.client = null;
        old.socket.destroy();
      }
      c.transport = t;
      c.networks = networks;
      c.lastHelloTs = ts;
      c.lastHeard = monotonicMs();
    }
    if (t.kind === 'udp') udpClients.set(t.id, c);
    if (conn) {
      conn.client = c;
      // Only now a session: a connection that never says hello stays evictable by tcpServer's caps.
      if (!conn.held) opts.onTcpSession?.(conn.socket);
      conn.held = true;
    }
    return c;
  };

  const onHello = (frame: Buffer, t: Transport, conn: TcpConn | null) => {
    if (versionOf(frame) !== RELAY_VERSION && frame.length >= 2) return refuseVersion(frame, t);
    const hello = parseHello(frame);
    if (!hello) return drop('garbage');
    const edId = hello.edPub.toString('latin1');
    const existing = byEdKey.get(edId);
    const session: SessionOfKey | undefined = existing && { lastHelloTs: existing.lastHelloTs, onThisTransport: sameTransport(existing.transport, t) };
    if (!existing && clients.size >= MAX_SESSIONS) return drop('relay-full');
    const source: HelloSource = { addr: t.kind === 'udp' ? t.ep : t.remote, off: 0, transport: t.kind, key: t.source };
    const verdict = gate.check(hello, edId, source, session);
    switch (verdict.kind) {
      case 'wrong-relay':
        return refuseName(t, verdict.sourceProven);
      case 'bad-challenge':
        // Not made by us for this source (another relay's, another address's, expired, none): a fresh one.
        drop('bad-challenge');
        return sendChallenge(t, session?.onThisTransport ? existing! : null);
      case 'refused':
        drop(verdict.reason);
        return noticeStranger(t, verdict.notice);
      case 'shed':
        return drop(verdict.reason);
      case 're-hello':
        existing!.lastHeard = monotonicMs();
        return sendTo(t, encodeHelloAck(RELAY_ACK_FLAGS, existing!.wgKey, hello.timestamp));
      case 'verified':
        return sendTo(t, encodeHelloAck(RELAY_ACK_FLAGS, register(hello.edPub, edId, verdict.networks, hello.timestamp, t, conn).wgKey, hello.timestamp));
    }
  };

  const onChallengeRequest = (frame: Buffer, t: Transport, from: Client | null) => {
    if (versionOf(frame) !== RELAY_VERSION && frame.length >= 2) return refuseVersion(frame, t);
    if (!isChallengeRequest(frame)) return drop('garbage');
    sendChallenge(t, from);
  };

  /** SEND from a registered client: limits first (before any lookup or copy), then pass it on. */
  const onSend = (frame: Buffer, from: Client, now: number) => {
    if (frame.length < PACKET_HEADER_SIZE) return drop('garbage');
    if (!from.packets.take(1, now)) return drop('rate-limit');
    if (!from.bytes.take(frame.length - PACKET_HEADER_SIZE, now)) return drop('byte-limit');
    forward(frame, from);
  };

  /** A SEND within its sender's limits: rewritten into RECV in place and queued to its destination. */
  const forward = (frame: Buffer, from: Client) => {
    const dst = clients.get(frame.toString('latin1', 1, 1 + KEY_SIZE));
    if (!dst || !shareNetwork(from.networks, dst.networks)) {
      // Another network's agent is "not here" either: the sender learns nothing about other networks.
      drop(dst ? 'other-network' : 'peer-not-here');
      if (from.notices.take()) sendTo(from.transport, encodeNotice(NOTICE_PEER_NOT_HERE, frame.subarray(1, 1 + KEY_SIZE)));
      return;
    }
    if (dst.transport.kind === 'udp' && !dst.takeSendSlot(udp!.flushes)) return drop('destination-busy');
    frame[0] = FRAME_RECV;
    from.wgKey.copy(frame, 1);
    counters.forwardedPackets++;
    counters.forwardedBytes += frame.length - PACKET_HEADER_SIZE;
    sendTo(dst.transport, frame);
  };

  /**
   * PEER_ADDR_REQ from a registered client: whether the asked-about session's frames come from the
   * address it names (proven by the session's hello challenge or its TCP handshake); no for a key
   * not here or of another network. Budgeted per client before the lookup; the answer is the
   * request's size and names no address the asker did not.
   */
  const onPeerAddressRequest = (frame: Buffer, from: Client, now: number) => {
    const q = parsePeerAddress(frame);
    if (!q) return drop('garbage');
    if (!from.peerAddressAnswers.take(1, now)) return drop('peer-address-rate');
    const dst = clients.get(q.wgKey.toString('latin1'));
    const seen = dst && shareNetwork(from.networks, dst.networks) ? (dst.transport.kind === 'udp' ? dst.transport.ep : dst.transport.remote) : null;
    counters.peerAddressAnswered++;
    sendTo(from.transport, answerPeerAddress(frame, seen !== null && seen.subarray(0, 16).equals(q.endpoint.subarray(0, 16))));
  };

  /** One frame from a UDP endpoint or a TCP connection; `from` is the client registered there, if any. */
  const onFrame = (frame: Buffer, t: Transport, from: Client | null, conn: TcpConn | null) => {
    if (frame.length > MAX_FRAME_SIZE) return drop('oversized');
    const type = frame[0];
    if (type === FRAME_HELLO) return onHello(frame, t, conn);
    if (type === FRAME_CHALLENGE_REQUEST) return onChallengeRequest(frame, t, from);
    if (type !== FRAME_SEND && type !== FRAME_KEEPALIVE && type !== FRAME_PEER_ADDRESS_REQUEST) return drop('garbage');
    if (!from) {
      drop('not-registered');
      // Over UDP no answer is larger than its request (a forged source must not get more than it
      // sent): a 1-byte keepalive gets none, and its client says hello again at its ack timeout.
      if (t.kind === 'tcp' || frame.length >= NOTICE_SIZE) noticeStranger(t, NOTICE_NOT_REGISTERED);
      return;
    }
    from.lastHeard = monotonicMs();
    if (type === FRAME_SEND) return onSend(frame, from, from.lastHeard);
    if (type === FRAME_PEER_ADDRESS_REQUEST) return onPeerAddressRequest(frame, from, from.lastHeard);
    if (frame.length !== 1) return drop('garbage');
    sendTo(from.transport, KEEPALIVE_ACK_FRAME);
  };

  // A round is cut into runs of datagrams from one endpoint (a flood comes in long runs), so
  // lookups and budgets are done once per run and a flooding sender's excess costs a few
  // arithmetic operations per datagram, with no allocation.
  const runStart = new Int32Array(READ_BATCH);
  const runCount = new Int32Array(READ_BATCH);
  const runSource: string[] = new Array(READ_BATCH);

  /** One read round: runs, fair shares when it came full, then each run in order. */
  const onUdpRound = (slab: Buffer, slot: number, lens: Int32Array, addrs: Buffer, n: number) => {
    let runs = 0;
    for (let i = 0; i < n; ) {
      let j = i + 1;
      while (j < n && sameEndpoint(addrs, i * ADDR_SIZE, addrs, j * ADDR_SIZE)) j++;
      runStart[runs] = i;
      runCount[runs] = j - i;
      runSource[runs++] = sourceKey(addrs, i * ADDR_SIZE);
      i = j;
    }
    shares.begin(runSource, runCount, runs, n === READ_BATCH);
    const now = monotonicMs();
    for (let r = 0; r < runs; r++) {
      const granted = shares.take(runSource[r], runCount[r]);
      if (granted < runCount[r]) drop('fair-share', runCount[r] - granted);
      if (granted > 0) onUdpRun(slab, slot, lens, addrs, runStart[r], runStart[r] + granted, runSource[r], now);
    }
  };

  /** Datagrams i..end-1 of a round, all from one endpoint. */
  const onUdpRun = (slab: Buffer, slot: number, lens: Int32Array, addrs: Buffer, i: number, end: number, source: string, now: number) => {
    const epOff = i * ADDR_SIZE;
    const id = addrs.toString('latin1', epOff, epOff + 18);
    let from = udpClients.get(id) ?? null;
    let stranger: Transport | null = null;
    let rateLimited = 0;
    for (let k = i; k < end; k++) {
      const off = k * slot;
      const len = lens[k];
      if (len === 0) {
        drop('garbage');
        continue;
      }
      try {
        const type = slab[off];
        if (from && type === FRAME_SEND && len >= PACKET_HEADER_SIZE && len <= MAX_FRAME_SIZE) {
          // The hot path: a registered sender's packet, limits checked before any lookup or copy.
          from.lastHeard = now;
          if (!from.packets.take(1, now)) rateLimited++;
          else if (!from.bytes.take(len - PACKET_HEADER_SIZE, now)) drop('byte-limit');
          else forward(slab.subarray(off, off + len), from);
          continue;
        }
        const msg = slab.subarray(off, off + len);
        if ((type & 0xf0) === 0xb0) {
          stranger ??= from ? null : { kind: 'udp', ep: addrs.subarray(epOff, epOff + ADDR_SIZE), id, source };
          onFrame(msg, from?.transport ?? stranger!, from, null);
          if (type === FRAME_HELLO) from = udpClients.get(id) ?? null; // a hello may have moved sessions
        } else if (!answerStunFromRound(msg, addrs, epOff, source, from !== null)) {
          drop('garbage');
        }
      } catch (err) {
        drop('garbage');
        log.error({ err }, 'relay: handling a datagram failed');
      }
    }
    if (rateLimited) drop('rate-limit', rateLimited);
  };

  /** STUN Binding requests (RFC 5389, and classic RFC 3489 ones) get the address they came from, within a budget per source and in total. */
  const answerStunFromRound = (msg: Buffer, addrs: Buffer, epOff: number, source: string, member: boolean): boolean => {
    const answer = answerBindingRequest(msg, 0, msg.length, addrs.subarray(epOff, epOff + ADDR_SIZE), 0);
    if (!answer) return false;
    if (!stunAllowed(source, member)) return true;
    counters.stunAnswered++;
    udp!.send(answer, addrs, epOff);
    return true;
  };

  const answerStunOnSecondPort = (msg: Buffer, rinfo: RemoteInfo) => {
    const ip = parseAddress(rinfo.address.replace(/%.*$/, ''));
    const endpoint = ip && makeEndpoint(ip, rinfo.port);
    const answer = endpoint && answerBindingRequest(msg, 0, msg.length, endpoint, 0);
    if (!answer) return drop('garbage');
    if (!stunAllowed(sourceKey(makeEndpoint(ip, 0)), udpClients.has(endpoint.toString('latin1', 0, 18)))) return;
    counters.stunAnswered++;
    stun2!.send(answer, rinfo.port, rinfo.address, (err) => err && drop('send-error'));
  };

  udp?.start(onUdpRound, (err) => log.error({ err }, 'relay UDP socket failed: no more UDP frames'));
  stun2?.on('message', (msg, rinfo) => {
    try {
      answerStunOnSecondPort(msg, rinfo);
    } catch (err) {
      drop('garbage');
      log.error({ err }, 'relay: handling a STUN datagram failed');
    }
  });
  stun2?.on('error', (err) => log.warn({ err }, 'relay STUN socket error'));

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const ours = (req.url ?? '').split('?')[0] === UPGRADE_PATH && String(req.headers.upgrade ?? '').toLowerCase() === UPGRADE_PROTOCOL;
    if (!ours) {
      // Leave other upgrades to other listeners; with none, refuse.
      // Destroyed once written: an upgraded socket has no HTTP timers, and a client need not close its half.
      if (opts.tcpServer!.listenerCount('upgrade') === 1) socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n', () => socket.destroy());
      return;
    }
    const remote = endpointOfText((socket as Socket).remoteAddress, (socket as Socket).remotePort);
    const source = sourceKey(remote);
    const fromSource = tcpPerSource.get(source) ?? 0;
    if (fromSource >= MAX_TCP_CONNECTIONS_PER_SOURCE) {
      drop('tcp-connections');
      return void socket.destroy();
    }
    tcpPerSource.set(source, fromSource + 1);
    const conn: TcpConn = { socket, client: null, held: false };
    tcpConns.add(conn);
    const t: Transport = { kind: 'tcp', socket, remote, source };
    const reader = new FrameReader((frame: Buffer) => {
      try {
        onFrame(frame, t, conn.client, conn);
      } catch (err) {
        drop('garbage');
        log.error({ err }, 'relay: handling a TCP frame failed');
      }
    }, (reason) => {
      drop(reason);
      socket.destroy();
    });
    socket.on('data', (chunk: Buffer) => reader.push(chunk));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      reader.close();
      tcpConns.delete(conn);
      const left = (tcpPerSource.get(source) ?? 1) - 1;
      if (left > 0) tcpPerSource.set(source, left);
      else tcpPerSource.delete(source);
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

  /** Forgets silent clients, and asks the allow hook again: a key no longer allowed loses its session. */
  const sweep = () => {
    const now = monotonicMs();
    for (const c of clients.values()) {
      const networks = gate.networksOf(c.edPub);
      if (now - c.lastHeard > CLIENT_IDLE_TIMEOUT_MS || !networks) {
        log.info({ event: 'client-gone', key: c.wgKey.toString('base64'), why: networks ? 'silent' : 'no longer allowed' }, 'relay client forgotten');
        forget(c);
      } else {
        c.networks = networks;
      }
    }
    gate.sweep();
  };
  const sweeper = setInterval(sweep, SWEEP_INTERVAL_MS);
  sweeper.unref();

  const udpPort = udp?.port ?? 0;
  log.info({ event: 'relay-listening', udpPort, stunSecondPort: stun2?.address().port, tcp: Boolean(opts.tcpServer), names }, 'relay listening');

  let stopped: Promise<void> | undefined;
  return {
    udpPort,
    stunSecondPort: stun2?.address().port ?? 0,
    stats: () => {
      let tcp = 0;
      for (const c of clients.values()) if (c.transport.kind === 'tcp') tcp++;
      return { clients: clients.size, udpClients: clients.size - tcp, tcpClients: tcp, sessionsOpened: counters.sessionsOpened, forwardedPackets: counters.forwardedPackets,
        forwardedBytes: counters.forwardedBytes, stunAnswered: counters.stunAnswered, peerAddressAnswered: counters.peerAddressAnswered, challengesAnswered: counters.challengesAnswered, helloVerifications: gate.verified, dropped: { ...counters.dropped } };
    },
    recheck: () => sweep(),
    stop: () => (stopped ??= (async () => {
      clearInterval(sweeper);
      opts.tcpServer?.off('upgrade', onUpgrade);
      for (const conn of tcpConns) conn.socket.destroy();
      clients.clear();
      byEdKey.clear();
      udpClients.clear();
      udp?.close();
      if (stun2) await new Promise<void>((resolve) => stun2!.close(() => resolve()));
    })()),
  };
}
