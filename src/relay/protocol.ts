import { isIP } from 'node:net';
import { AgentVpnError } from '../errors.js';
import { Identity, verifySignature } from '../identity/identity.js';
import { CHALLENGE_SIZE } from './challenge.js';
import { RELAY_NAME_HASH_SIZE } from './relay-name.js';

/**
 * The relay's wire format and timings, shared by the relay server and the agents' relay client.
 *
 * Every frame starts with one type byte in 0xb0–0xbf, so relay frames share the agent's UDP
 * socket with WireGuard (types 1–4), disco (0xa0–0xaf) and STUN (first byte 0x00/0x01). Over
 * UDP one datagram is one frame; over the TCP fallback each frame is preceded by its length
 * (tcp.ts). Integers are big-endian.
 *
 *   | frame             | dir | layout (after the type byte)                                                   | size |
 *   | ----------------- | --- | ------------------------------------------------------------------------------ | ---- |
 *   | HELLO b0          | c→s | version(1) flags(1, zero) ed25519 public key(32) timestamp ms(8)               | 143  |
 *   |                   |     | relay name hash(16, relay-name.ts) challenge(20) signature(64)                 |      |
 *   | HELLO_ACK b1      | s→c | version(1) flags(1) WireGuard key(32) timestamp echoed(8)                      | 43   |
 *   | KEEPALIVE b2      | c→s | -                                                                              | 1    |
 *   | KEEPALIVE_ACK b3  | s→c | -                                                                              | 1    |
 *   | SEND b4           | c→s | destination WireGuard key(32) opaque packet                                    | 33+  |
 *   | RECV b5           | s→c | source WireGuard key(32) opaque packet                                         | 33+  |
 *   | NOTICE b6         | s→c | code(1) WireGuard key(32) (the absent peer for PEER_NOT_HERE; for BAD_VERSION   | 34   |
 *   |                   |     | its first byte is the relay's version; else zeros)                             |      |
 *   | CHALLENGE_REQ b7  | c→s | version(1) zeros(32): padded so no answer to it is larger                      | 34   |
 *   | CHALLENGE b8      | s→c | version(1) challenge(20) (challenge.ts)                                        | 22   |
 *   | PEER_ADDR_REQ b9  | c→s | query id(16) WireGuard key(32) claimed address(20-byte endpoint, port ignored) | 69   |
 *   | PEER_ADDR ba      | s→c | query id echoed(16) WireGuard key(32) the claimed address with port zeroed if  | 69   |
 *   |                   |     | the relay sees that key's session come from it; all zeros otherwise           |      |
 *
 * A hello needs a challenge: the client asks for one (CHALLENGE_REQ), the relay answers with a
 * MAC bound to the address and port the request came from (a UDP source, or the TCP connection's
 * remote end) under a secret of its own that it replaces every 2 minutes, keeping nothing. The
 * hello signature covers HELLO_LABEL followed by bytes 1..78 of the frame (version, flags, key,
 * timestamp, relay name hash, challenge). The relay checks the name first (a 16-byte compare per
 * name it has): a hello for a relay name that is not one of its own is refused, counted, and
 * answered with NOTICE WRONG_RELAY only when its challenge is ours for its source; so a relay M
 * that an agent dials cannot replay the agent's hello to another relay R, even over a challenge
 * it fetched from R for its own address (the challenge alone did not stop that in version 2).
 * Then the challenge (one MAC): a hello whose challenge
 * this relay did not make for the hello's own source is answered with a fresh CHALLENGE for that
 * source, so a captured hello cannot be replayed to another relay, nor to this one from another
 * address, nor after ~4 minutes; and since every later check of a hello runs only for a source
 * that received the challenge, the notices refusing a hello cannot be sent to a spoofed address.
 *
 * The relay derives the client's WireGuard key from the signing key, so no one can register
 * under another agent's key; the relay never reads the packets it forwards. PEER_NOT_HERE also
 * answers a SEND to an agent of another network (the relay forwards only within a network), so a
 * sender learns nothing about other networks. A hello or challenge request the relay sheds (its
 * budgets, hello-gate.ts, limits.ts) gets no answer at all: the client's retransmission tries
 * again. A hello or challenge request of another protocol version gets NOTICE BAD_VERSION.
 *
 * Versions: a relay speaks one version and refuses every other (NOTICE BAD_VERSION carrying its
 * own, and a log line saying who must upgrade); there is no fallback, since taking version 2
 * hellos, which name no relay, at a version 3 relay would reopen the replay above. Version 3
 * agents need version 3 relays and the other way round: upgrade relays and agents together.
 *
 * Features inside a version are announced in HELLO_ACK's flags, so older peers of the same version
 * keep working: a relay that sets ACK_PEER_ADDRESS answers PEER_ADDR_REQ from a registered client
 * (a relay without it drops the frame as garbage, and its clients never send one). The answer is
 * the address the relay sees another client's session come from, a client of a network the asker
 * shares, else all zeros (like PEER_NOT_HERE, nothing about other networks). That address was proven by a
 * round trip (the challenge of the hello reached it, or the TCP handshake did), so a member cannot
 * choose it: the easy side of birthday probing aims only at it (paths/magicsock.ts). The port is
 * not told (no one needs it). The query id is random: an off-path sender spoofing the relay's UDP
 * address cannot forge an answer to a query it did not see.
 */

export const FRAME_HELLO = 0xb0;
export const FRAME_HELLO_ACK = 0xb1;
export const FRAME_KEEPALIVE = 0xb2;
export const FRAME_KEEPALIVE_ACK = 0xb3;
export const FRAME_SEND = 0xb4;
export const FRAME_RECV = 0xb5;
export const FRAME_NOTICE = 0xb6;
export const FRAME_CHALLENGE_REQUEST = 0xb7;
export const FRAME_CHALLENGE = 0xb8;
export const FRAME_PEER_ADDRESS_REQUEST = 0xb9;
export const FRAME_PEER_ADDRESS = 0xba;

/** HELLO_ACK flag: this relay answers PEER_ADDR_REQ. */
export const ACK_PEER_ADDRESS = 0x01;
/** Flags this relay's HELLO_ACK carries. */
export const RELAY_ACK_FLAGS = ACK_PEER_ADDRESS;

/**
 * 3: hellos carry the hash of the relay name the agent dialled (version 2 hellos did not, and a
 * relay could pass them on to another); 2: hellos carry the relay's challenge (version 1 hellos
 * did not, and could be replayed to any relay).
 */
export const RELAY_VERSION = 3;
const HELLO_LABEL = Buffer.from('agentvpn relay hello v3\n');

export const KEY_SIZE = 32;
/** Where the relay name hash, the challenge and the signature sit in a hello; the signature covers bytes 1..HELLO_SIGNED_END. */
export const HELLO_NAME_AT = 43;
export const HELLO_CHALLENGE_AT = HELLO_NAME_AT + RELAY_NAME_HASH_SIZE;
const HELLO_SIGNED_END = HELLO_CHALLENGE_AT + CHALLENGE_SIZE;
export const HELLO_SIZE = HELLO_SIGNED_END + 64;
export const HELLO_ACK_SIZE = 1 + 1 + 1 + 32 + 8;
export const NOTICE_SIZE = 1 + 1 + 32;
/** A challenge request is as large as the largest answer to it (a BAD_VERSION notice), so it amplifies nothing. */
export const CHALLENGE_REQUEST_SIZE = NOTICE_SIZE;
export const CHALLENGE_FRAME_SIZE = 1 + 1 + CHALLENGE_SIZE;
/** A peer-address query's id: random, so an answer cannot be forged by who did not see the query. */
export const QUERY_ID_SIZE = 16;
/** PEER_ADDR_REQ and PEER_ADDR: one size, so the relay's answer amplifies nothing. */
export const PEER_ADDRESS_FRAME_SIZE = 1 + QUERY_ID_SIZE + 32 + 20;
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
/** The relay speaks another protocol version (its own in the key field's first byte): one side needs an upgrade. */
export const NOTICE_BAD_VERSION = 6;
/** The hello names another relay than this one: the relay's --name is not the name the agent dialled it by. */
export const NOTICE_WRONG_RELAY = 7;

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
/** A peer-address query unanswered this long has its answer taken as "not known" (the relay is a round trip away; birthday answers must follow within 5 s). */
export const PEER_ADDRESS_TIMEOUT_MS = 2_000;
/** Peer-address queries a client keeps open at once (birthday probing runs at most 4 easy attempts). */
export const MAX_PEER_ADDRESS_QUERIES = 16;
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
  return Buffer.concat([HELLO_LABEL, frame.subarray(1, HELLO_SIGNED_END)]);
}

/**
 * A hello for the relay whose name hashes to `relayName` (relay-name.ts), signed over the relay's
 * challenge (CHALLENGE_SIZE bytes, as the relay sent it).
 */
export function encodeHello(identity: Identity, timestamp: number, flags: number, relayName: Uint8Array, challenge: Uint8Array): Buffer {
  if (relayName.length !== RELAY_NAME_HASH_SIZE) throw new AgentVpnError('BAD_RELAY_NAME', `a relay name hash is ${RELAY_NAME_HASH_SIZE} bytes, got ${relayName.length}`, 'hash the name with relayNameHash');
  if (challenge.length !== CHALLENGE_SIZE) throw new AgentVpnError('BAD_CHALLENGE', `a relay challenge is ${CHALLENGE_SIZE} bytes, got ${challenge.length}`, 'take the challenge from a CHALLENGE frame');
  const f = Buffer.alloc(HELLO_SIZE);
  f[0] = FRAME_HELLO;
  f[1] = RELAY_VERSION;
  f[2] = flags;
  f.set(identity.publicKey, 3);
  f.writeBigUInt64BE(BigInt(timestamp), 35);
  f.set(relayName, HELLO_NAME_AT);
  f.set(challenge, HELLO_CHALLENGE_AT);
  f.set(identity.sign(helloMessage(f)), HELLO_SIGNED_END);
  return f;
}

export interface Hello {
  flags: number;
  edPub: Buffer;
  timestamp: number;
  /** The hash of the relay name the agent dialled (a view of the frame). */
  relayName: Buffer;
  /** The relay's challenge the hello was signed over (a view of the frame). */
  challenge: Buffer;
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
    relayName: frame.subarray(HELLO_NAME_AT, HELLO_CHALLENGE_AT),
    challenge: frame.subarray(HELLO_CHALLENGE_AT, HELLO_SIGNED_END),
    verify: () => verifySignature(edPub, helloMessage(frame), frame.subarray(HELLO_SIGNED_END, HELLO_SIZE)),
  };
}

/** The version a HELLO or CHALLENGE_REQ frame says it speaks (any length), or null when it has none. */
export function versionOf(frame: Uint8Array): number | null {
  return frame.length >= 2 ? frame[1] : null;
}

/** A challenge request: our version, padded with zeros to CHALLENGE_REQUEST_SIZE. */
export function encodeChallengeRequest(): Buffer {
  const f = Buffer.alloc(CHALLENGE_REQUEST_SIZE);
  f[0] = FRAME_CHALLENGE_REQUEST;
  f[1] = RELAY_VERSION;
  return f;
}

/** Whether a frame is a well-formed challenge request of our version (full size: no amplification). */
export function isChallengeRequest(frame: Uint8Array): boolean {
  return frame.length === CHALLENGE_REQUEST_SIZE && frame[0] === FRAME_CHALLENGE_REQUEST && frame[1] === RELAY_VERSION;
}

/** The challenge in a CHALLENGE frame (a view), or null when malformed. */
export function parseChallenge(frame: Buffer): Buffer | null {
  if (frame.length !== CHALLENGE_FRAME_SIZE || frame[0] !== FRAME_CHALLENGE || frame[1] !== RELAY_VERSION) return null;
  return frame.subarray(2);
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

/** NOTICE BAD_VERSION: the relay's version in the key field's first byte. */
export function encodeVersionNotice(): Buffer {
  return encodeNotice(NOTICE_BAD_VERSION, Uint8Array.of(RELAY_VERSION));
}

export function encodeNotice(code: number, key?: Uint8Array): Buffer {
  const f = Buffer.alloc(NOTICE_SIZE);
  f[0] = FRAME_NOTICE;
  f[1] = code;
  if (key) f.set(key.subarray(0, KEY_SIZE), 2);
  return f;
}

/**
 * PEER_ADDR_REQ: whether the session of a WireGuard key comes from the `claimed` address (a 20-byte
 * endpoint; its port is not asked about), under a query id of the client's choosing. The relay
 * only confirms or denies: it tells no one an address they did not already name.
 */
export function encodePeerAddressRequest(queryId: Uint8Array, wgKey: Uint8Array, claimed: Uint8Array): Buffer {
  const f = Buffer.alloc(PEER_ADDRESS_FRAME_SIZE);
  f[0] = FRAME_PEER_ADDRESS_REQUEST;
  f.set(queryId.subarray(0, QUERY_ID_SIZE), 1);
  f.set(wgKey.subarray(0, KEY_SIZE), 1 + QUERY_ID_SIZE);
  f.set(claimed.subarray(0, 16), 1 + QUERY_ID_SIZE + KEY_SIZE); // the address, not the port
  return f;
}

/**
 * PEER_ADDR: the request turned into its answer in place (the id and key stay): the claimed
 * address, port zeroed, when `confirmed`; all zeros otherwise (another address, a key not here or
 * in no network the asker shares).
 */
export function answerPeerAddress(request: Buffer, confirmed: boolean): Buffer {
  request[0] = FRAME_PEER_ADDRESS;
  request.fill(0, confirmed ? 1 + QUERY_ID_SIZE + KEY_SIZE + 16 : 1 + QUERY_ID_SIZE + KEY_SIZE);
  return request;
}

/** A PEER_ADDR_REQ or PEER_ADDR frame's parts (views), or null when it is not exactly that size. */
export function parsePeerAddress(frame: Buffer): { queryId: Buffer; wgKey: Buffer; endpoint: Buffer } | null {
  if (frame.length !== PEER_ADDRESS_FRAME_SIZE || (frame[0] !== FRAME_PEER_ADDRESS && frame[0] !== FRAME_PEER_ADDRESS_REQUEST)) return null;
  return { queryId: frame.subarray(1, 1 + QUERY_ID_SIZE), wgKey: frame.subarray(1 + QUERY_ID_SIZE, 1 + QUERY_ID_SIZE + KEY_SIZE), endpoint: frame.subarray(1 + QUERY_ID_SIZE + KEY_SIZE) };
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
