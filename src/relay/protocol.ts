import { isIP } from 'node:net';
import { AgentVpnError } from '../errors.js';
import { Identity, verifySignature } from '../identity/identity.js';

/**
 * The relay's wire format and timings, shared by the relay server and the agents' relay client.
 *
 * Every frame starts with one type byte in 0xb0–0xbf, so relay frames share the agent's UDP
 * socket with WireGuard (types 1–4), disco (0xa0–0xaf) and STUN (first byte 0x00/0x01). Over
 * UDP one datagram is one frame; over the TCP fallback each frame is preceded by its length
 * (tcp.ts). Integers are big-endian.
 *
 *   HELLO      c→s  b0 | version(1) | flags(1) | ed25519 public key(32) | timestamp ms(8) | signature(64)
 *   HELLO_ACK  s→c  b1 | version(1) | flags(1) | WireGuard key(32) | timestamp echoed(8)
 *   KEEPALIVE  c→s  b2
 *   KEEPALIVE_ACK s→c b3
 *   SEND       c→s  b4 | destination WireGuard key(32) | opaque packet
 *   RECV       s→c  b5 | source WireGuard key(32) | opaque packet
 *   NOTICE     s→c  b6 | code(1) | WireGuard key(32) (the absent peer for PEER_NOT_HERE, else zeros)
 *
 * The hello signature covers HELLO_LABEL followed by bytes 1..43 of the frame (version, flags,
 * key, timestamp). The relay derives the client's WireGuard key from the signing key, so no one
 * can register under another agent's key; the relay never reads the packets it forwards.
 * PEER_NOT_HERE also answers a SEND to an agent of another network (the relay forwards only
 * within a network), so a sender learns nothing about other networks. A hello the relay sheds
 * (its budgets, hello-gate.ts) gets no answer at all: the client's retransmission tries again.
 */

export const FRAME_HELLO = 0xb0;
export const FRAME_HELLO_ACK = 0xb1;
export const FRAME_KEEPALIVE = 0xb2;
export const FRAME_KEEPALIVE_ACK = 0xb3;
export const FRAME_SEND = 0xb4;
export const FRAME_RECV = 0xb5;
export const FRAME_NOTICE = 0xb6;

export const RELAY_VERSION = 1;
const HELLO_LABEL = Buffer.from('agentvpn relay hello v1\n');
/** Hello flag: only prove the path works (ack it), do not move the session to it. */
export const HELLO_FLAG_PROBE = 0x01;

export const KEY_SIZE = 32;
export const HELLO_SIZE = 1 + 1 + 1 + 32 + 8 + 64;
export const HELLO_ACK_SIZE = 1 + 1 + 1 + 32 + 8;
export const NOTICE_SIZE = 1 + 1 + 32;
/** SEND and RECV: type byte and a WireGuard key before the packet. */
export const PACKET_HEADER_SIZE = 1 + KEY_SIZE;
/**
 * Largest packet the relay forwards. WireGuard datagrams are MTU + 32 bytes; 9 KiB covers
 * jumbo-frame MTUs (9000) with room to spare, and everything larger is abuse.
 */
export const MAX_PACKET_SIZE = 9 * 1024;
export const MAX_FRAME_SIZE = PACKET_HEADER_SIZE + MAX_PACKET_SIZE;

export const NOTICE_PEER_NOT_HERE = 1;
/** The relay does not know this source (forgot it, or its NAT mapping changed): send a hello. */
export const NOTICE_NOT_REGISTERED = 2;
export const NOTICE_BAD_SIGNATURE = 3;
/** The hello's timestamp is too far from the relay's clock, or not newer than the last one. */
export const NOTICE_STALE_TIMESTAMP = 4;
export const NOTICE_NOT_ALLOWED = 5;

// --- Timings (why each value) ---

/** Client keepalive: NAT UDP mappings commonly expire after 30 s; 10 s survives two lost keepalives. */
export const KEEPALIVE_INTERVAL_MS = 10_000;
/** A keepalive unanswered this long makes the client re-send its hello (and fall back to TCP if that fails). */
export const KEEPALIVE_ACK_TIMEOUT_MS = 3_000;
/** The relay forgets a client silent this long: six missed keepalives. */
export const CLIENT_IDLE_TIMEOUT_MS = 60_000;
/** A TCP connection must say hello this soon, so idle sockets cannot pile up. */
export const TCP_HELLO_TIMEOUT_MS = 10_000;
/** Hello retransmission while connecting (a lost hello costs one second, not the whole UDP timeout). */
export const HELLO_RETRY_MS = 1_000;
/** No ack over UDP for this long: UDP to the relay is taken to be blocked, use TCP. */
export const DEFAULT_UDP_TIMEOUT_MS = 3_000;
/** While on TCP, probe UDP this often: networks change, and UDP is the faster path. */
export const UDP_RETRY_MS = 30_000;
/** Reconnect backoff after both transports failed: quick after a blip, at most every 30 s. */
export const BACKOFF_MIN_MS = 1_000;
export const BACKOFF_MAX_MS = 30_000;
/** Hello timestamps may be this far from the relay's clock (the registry allows the same skew). */
export const MAX_CLOCK_SKEW_MS = 5 * 60_000;
/** How often the relay sweeps silent clients (so one is forgotten at most 5 s late). */
export const SWEEP_INTERVAL_MS = 5_000;

/** The logger calls relay server and client make (a pino Logger fits). */
export interface RelayLog {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const SILENT_LOG: RelayLog = { debug() {}, info() {}, warn() {}, error() {} };

/** Where a relay can be reached, as the registry hands it out in JoinResult. */
export interface RelayInfo {
  /** "host:port" ("[v6]:port") of the relay's UDP socket. */
  udp: string;
  /** "http(s)://host:port/v1/relay": the TCP fallback. */
  tcp?: string;
  /** Its name in the network (agents' records name their home relay by it); absent from older registries: `udp` names it. */
  name?: string;
  /** A label for where it is ("eu-west"), shown in status; agents choose by measured RTT, not by label. */
  region?: string;
}

export function isRelayFrame(buf: Uint8Array, off: number, len: number): boolean {
  return len > 0 && (buf[off] & 0xf0) === 0xb0;
}

function helloMessage(frame: Uint8Array): Buffer {
  return Buffer.concat([HELLO_LABEL, frame.subarray(1, 43)]);
}

export function encodeHello(identity: Identity, timestamp: number, flags: number): Buffer {
  const f = Buffer.alloc(HELLO_SIZE);
  f[0] = FRAME_HELLO;
  f[1] = RELAY_VERSION;
  f[2] = flags;
  f.set(identity.publicKey, 3);
  f.writeBigUInt64BE(BigInt(timestamp), 35);
  f.set(identity.sign(helloMessage(f)), 43);
  return f;
}

export interface Hello {
  flags: number;
  edPub: Buffer;
  timestamp: number;
  /** Verifies the signature (the costly step: do it after the cheap checks). */
  verify(): boolean;
}

/** Parses a HELLO frame (exactly HELLO_SIZE bytes, our version); null when malformed. */
export function parseHello(frame: Buffer): Hello | null {
  if (frame.length !== HELLO_SIZE || frame[0] !== FRAME_HELLO || frame[1] !== RELAY_VERSION) return null;
  const edPub = frame.subarray(3, 35);
  return {
    flags: frame[2],
    edPub,
    timestamp: Number(frame.readBigUInt64BE(35)),
    verify: () => verifySignature(edPub, helloMessage(frame), frame.subarray(43, HELLO_SIZE)),
  };
}

export function encodeHelloAck(flags: number, wgKey: Uint8Array, timestamp: number): Buffer {
  const f = Buffer.alloc(HELLO_ACK_SIZE);
  f[0] = FRAME_HELLO_ACK;
  f[1] = RELAY_VERSION;
  f[2] = flags;
  f.set(wgKey, 3);
  f.writeBigUInt64BE(BigInt(timestamp), 35);
  return f;
}

export function parseHelloAck(frame: Buffer): { flags: number; wgKey: Buffer; timestamp: number } | null {
  if (frame.length !== HELLO_ACK_SIZE || frame[0] !== FRAME_HELLO_ACK || frame[1] !== RELAY_VERSION) return null;
  return { flags: frame[2], wgKey: frame.subarray(3, 35), timestamp: Number(frame.readBigUInt64BE(35)) };
}

export function encodeNotice(code: number, key?: Uint8Array): Buffer {
  const f = Buffer.alloc(NOTICE_SIZE);
  f[0] = FRAME_NOTICE;
  f[1] = code;
  if (key) f.set(key.subarray(0, KEY_SIZE), 2);
  return f;
}

export const KEEPALIVE_FRAME = Buffer.from([FRAME_KEEPALIVE]);
export const KEEPALIVE_ACK_FRAME = Buffer.from([FRAME_KEEPALIVE_ACK]);

/** A SEND frame: the type, the destination's WireGuard key, the packet (one copy). */
export function encodeSend(dstWgKey: Uint8Array, packet: Uint8Array, into?: Buffer, at = 0): Buffer {
  const f = into ?? Buffer.allocUnsafe(PACKET_HEADER_SIZE + packet.length);
  f[at] = FRAME_SEND;
  f.set(dstWgKey, at + 1);
  f.set(packet, at + PACKET_HEADER_SIZE);
  return f;
}

/** The WireGuard key an Ed25519 identity key is known by on the relay. */
export function wgKeyOf(edPub: Uint8Array): Buffer {
  return Buffer.from(Identity.wgPublicKeyOf(edPub));
}

/** "host:port" / "[v6]:port" → parts; throws BAD_ADDRESS with a hint. */
export function parseHostPort(text: string, what = 'address'): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535 || (m[1] !== undefined && isIP(m[1]) !== 6)) {
    throw new AgentVpnError('BAD_ADDRESS', `invalid ${what} "${text}"`, 'give HOST:PORT, e.g. 203.0.113.10:7443 or [2001:db8::1]:7443');
  }
  return { host: m[1] ?? m[2], port };
}

export function formatHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
