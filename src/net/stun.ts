/**
 * STUN Binding (RFC 5389), both sides: the client half asks a server which address and port
 * its datagrams come from (the "server-reflexive" endpoint behind a NAT); the server half (run
 * by the registry and by any agent) answers such requests.
 *
 * STUN shares the agent's one UDP socket with WireGuard, disco and relay frames, so every
 * function here takes (buf, off, len), never trusts a length field, reads in place and
 * allocates only the answer it returns.
 *
 * Message layout (RFC 5389 §6): type u16 (top two bits 0), length u16 (of the attributes,
 * a multiple of 4), magic cookie 0x2112A442, 96-bit transaction ID, then attributes as
 * type u16, length u16, value padded to 4 bytes.
 */
import { randomBytes } from 'node:crypto';

export const STUN_HEADER_SIZE = 20;
export const STUN_TXID_SIZE = 12;
export const STUN_MAGIC_COOKIE = 0x2112a442;
/** The registered STUN port (RFC 5389 §18.4). */
export const STUN_DEFAULT_PORT = 3478;

const BINDING_REQUEST = 0x0001;
const BINDING_SUCCESS = 0x0101;

const ATTR_MAPPED_ADDRESS = 0x0001;
const ATTR_MESSAGE_INTEGRITY = 0x0008;
const ATTR_XOR_MAPPED_ADDRESS = 0x0020;
/** XOR-MAPPED-ADDRESS's number in pre-RFC drafts; some old servers still send it. */
const ATTR_XOR_MAPPED_ADDRESS_DRAFT = 0x8020;
const ATTR_FINGERPRINT = 0x8028;
const FINGERPRINT_XOR = 0x5354554e;

const FAMILY_IPV4 = 0x01;
const FAMILY_IPV6 = 0x02;

const COOKIE_BYTES = [0x21, 0x12, 0xa4, 0x42] as const;
const V4_MAPPED_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] as const;

// CRC-32 (ISO 3309 / IEEE 802.3, reflected polynomial 0xEDB88320) for FINGERPRINT (§15.5).
const CRC_TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

/** CRC-32 of buf[start, end) as an unsigned number. */
export function crc32(buf: Uint8Array, start = 0, end = buf.length): number {
  let c = -1;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

function u16(buf: Uint8Array, at: number): number {
  return (buf[at]! << 8) | buf[at + 1]!;
}

function u32(buf: Uint8Array, at: number): number {
  return ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
}

function inBounds(buf: Uint8Array, off: number, len: number): boolean {
  return Number.isInteger(off) && Number.isInteger(len) && off >= 0 && len >= 0 && off + len <= buf.length;
}

/** Header checks shared by the RFC 5389 and the classic (RFC 3489) forms: size, top bits, length. */
function headerOk(buf: Uint8Array, off: number, len: number): boolean {
  if (!inBounds(buf, off, len) || len < STUN_HEADER_SIZE) return false;
  if ((buf[off]! & 0xc0) !== 0) return false;
  const bodyLen = u16(buf, off + 2);
  return (bodyLen & 3) === 0 && bodyLen + STUN_HEADER_SIZE === len;
}

function hasCookie(buf: Uint8Array, off: number): boolean {
  return (
    buf[off + 4] === COOKIE_BYTES[0] &&
    buf[off + 5] === COOKIE_BYTES[1] &&
    buf[off + 6] === COOKIE_BYTES[2] &&
    buf[off + 7] === COOKIE_BYTES[3]
  );
}

/**
 * True for a datagram that is one whole RFC 5389 STUN message: top two bits zero, the length
 * field a multiple of 4 that accounts for exactly the rest of the datagram, and the magic
 * cookie at offset 4. (WireGuard messages 1–4 fail the cookie test; disco/relay frames start
 * with 0xa0–0xbf, which has the top bit set.)
 */
export function isStun(buf: Uint8Array, off: number, len: number): boolean {
  return headerOk(buf, off, len) && hasCookie(buf, off);
}

// Result of scanAttributes: where the address attributes' values start (-1 when absent).
let scanXor = -1;
let scanXorLen = 0;
let scanMapped = -1;
let scanMappedLen = 0;

/**
 * Walks the attributes of a message whose header is valid. Records the first XOR-MAPPED-ADDRESS
 * and MAPPED-ADDRESS before any MESSAGE-INTEGRITY (RFC 5389 §15.4: attributes after it, other
 * than FINGERPRINT, are ignored). Returns false when an attribute overruns the message, or a
 * FINGERPRINT is not last, has the wrong size, or does not match (§15.5).
 */
function scanAttributes(buf: Uint8Array, off: number, len: number, checkFingerprint: boolean): boolean {
  scanXor = scanMapped = -1;
  scanXorLen = scanMappedLen = 0;
  const end = off + len;
  let p = off + STUN_HEADER_SIZE;
  let afterIntegrity = false;
  while (p < end) {
    if (end - p < 4) return false;
    const type = u16(buf, p);
    const valueLen = u16(buf, p + 2);
    const value = p + 4;
    const next = value + ((valueLen + 3) & ~3);
    if (next > end) return false;
    if (type === ATTR_FINGERPRINT && checkFingerprint) {
      if (valueLen !== 4 || next !== end) return false;
      // The CRC covers everything before this attribute, with the header length as sent (which
      // already counts the FINGERPRINT, since it is last).
      return ((crc32(buf, off, p) ^ FINGERPRINT_XOR) >>> 0) === u32(buf, value);
    }
    if (!afterIntegrity) {
      if (type === ATTR_MESSAGE_INTEGRITY) {
        afterIntegrity = true;
      } else if ((type === ATTR_XOR_MAPPED_ADDRESS || type === ATTR_XOR_MAPPED_ADDRESS_DRAFT) && scanXor < 0) {
        scanXor = value;
        scanXorLen = valueLen;
      } else if (type === ATTR_MAPPED_ADDRESS && scanMapped < 0) {
        scanMapped = value;
        scanMappedLen = valueLen;
      }
    }
    p = next;
  }
  return true;
}

/** A new random 96-bit transaction ID. */
export function newTransactionId(): Buffer {
  return randomBytes(STUN_TXID_SIZE);
}

export interface BindingRequestOptions {
  /** Append a FINGERPRINT (§15.5), which lets a multiplexing server tell STUN apart. Default true. */
  fingerprint?: boolean;
}

function appendFingerprint(msg: Buffer, at: number): void {
  msg.writeUInt16BE(ATTR_FINGERPRINT, at);
  msg.writeUInt16BE(4, at + 2);
  msg.writeUInt32BE((crc32(msg, 0, at) ^ FINGERPRINT_XOR) >>> 0, at + 4);
}

/** A Binding request with the given 12-byte transaction ID (no attributes but FINGERPRINT). */
export function buildBindingRequest(txid: Uint8Array, opts: BindingRequestOptions = {}): Buffer {
  if (txid.length !== STUN_TXID_SIZE) throw new RangeError(`STUN transaction ID must be ${STUN_TXID_SIZE} bytes, got ${txid.length}`);
  const fingerprint = opts.fingerprint ?? true;
  const msg = Buffer.alloc(STUN_HEADER_SIZE + (fingerprint ? 8 : 0));
  msg.writeUInt16BE(BINDING_REQUEST, 0);
  msg.writeUInt16BE(msg.length - STUN_HEADER_SIZE, 2);
  msg.writeUInt32BE(STUN_MAGIC_COOKIE, 4);
  msg.set(txid, 8);
  if (fingerprint) appendFingerprint(msg, STUN_HEADER_SIZE);
  return msg;
}

export interface BindingResponse {
  /** The transaction ID (a copy), to match against the request. */
  txid: Buffer;
  /** The reflexive address: 4 bytes for IPv4, 16 for IPv6. */
  address: Uint8Array;
  port: number;
}

/** Decodes a (XOR-)MAPPED-ADDRESS value; null when its family or size is wrong. */
function decodeAddress(buf: Uint8Array, off: number, value: number, valueLen: number, xor: boolean): BindingResponse | null {
  const family = buf[value + 1];
  const size = family === FAMILY_IPV4 ? 4 : family === FAMILY_IPV6 ? 16 : 0;
  if (size === 0 || valueLen < 4 + size) return null;
  let port = u16(buf, value + 2);
  const address = new Uint8Array(size);
  for (let i = 0; i < size; i++) address[i] = buf[value + 4 + i]!;
  if (xor) {
    // X-Port is xored with the cookie's top 16 bits, X-Address with the cookie then the
    // transaction ID (RFC 5389 §15.2): bytes 4.. of the header, in order.
    port ^= STUN_MAGIC_COOKIE >>> 16;
    for (let i = 0; i < size; i++) address[i] ^= buf[off + 4 + i]!;
  }
  return { txid: Buffer.from(buf.subarray(off + 8, off + STUN_HEADER_SIZE)), address, port };
}

/**
 * Parses a Binding success response: the reflexive address from XOR-MAPPED-ADDRESS, or from
 * MAPPED-ADDRESS when the server sent only that. Null for anything else, for a malformed
 * message and for one whose FINGERPRINT does not match. MESSAGE-INTEGRITY is not checked
 * (Binding for NAT discovery needs no credentials) and attributes after it are ignored.
 */
export function parseBindingResponse(buf: Uint8Array, off: number, len: number): BindingResponse | null {
  if (!isStun(buf, off, len) || u16(buf, off) !== BINDING_SUCCESS) return null;
  if (!scanAttributes(buf, off, len, true)) return null;
  if (scanXor >= 0) return decodeAddress(buf, off, scanXor, scanXorLen, true);
  if (scanMapped >= 0) return decodeAddress(buf, off, scanMapped, scanMappedLen, false);
  return null;
}

/** True when the 20-byte endpoint at ep[off] holds an IPv4-mapped IPv6 address. */
function endpointIsV4(ep: Uint8Array, off: number): boolean {
  for (let i = 0; i < 12; i++) if (ep[off + i] !== V4_MAPPED_PREFIX[i]) return false;
  return true;
}

/**
 * Server side: the answer to a Binding request that came from `src` (a 20-byte endpoint at
 * src[srcOff]), or null for anything else (a response, another method, a malformed or
 * mis-fingerprinted message).
 *
 * RFC 5389 requests get XOR-MAPPED-ADDRESS and FINGERPRINT. Classic RFC 3489 requests (no magic
 * cookie, 128-bit ID) get MAPPED-ADDRESS, as §12.2 asks, so old clients work too; note that
 * isStun() is false for them, so they only reach a socket that calls this directly. Other
 * attributes of the request (CHANGE-REQUEST, USERNAME, …) are ignored: this server has one
 * address and wants no credentials, like most public STUN servers.
 */
export function answerBindingRequest(buf: Uint8Array, off: number, len: number, src: Uint8Array, srcOff: number): Buffer | null {
  if (!headerOk(buf, off, len) || u16(buf, off) !== BINDING_REQUEST) return null;
  if (!inBounds(src, srcOff, 20)) return null;
  const v4 = endpointIsV4(src, srcOff);
  const addrOff = srcOff + (v4 ? 12 : 0);
  const size = v4 ? 4 : 16;
  const port = u16(src, srcOff + 16);
  const modern = hasCookie(buf, off);
  if (!scanAttributes(buf, off, len, modern)) return null;

  if (!modern) {
    if (!v4) return null; // RFC 3489 knows only IPv4
    const msg = Buffer.alloc(STUN_HEADER_SIZE + 12);
    msg.writeUInt16BE(BINDING_SUCCESS, 0);
    msg.writeUInt16BE(12, 2);
    msg.set(buf.subarray(off + 4, off + STUN_HEADER_SIZE), 4); // the 128-bit transaction ID
    msg.writeUInt16BE(ATTR_MAPPED_ADDRESS, 20);
    msg.writeUInt16BE(8, 22);
    msg[25] = FAMILY_IPV4;
    msg.writeUInt16BE(port, 26);
    for (let i = 0; i < 4; i++) msg[28 + i] = src[addrOff + i]!;
    return msg;
  }

  const attrLen = 4 + size; // reserved, family, X-Port, X-Address
  const msg = Buffer.alloc(STUN_HEADER_SIZE + 4 + attrLen + 8);
  msg.writeUInt16BE(BINDING_SUCCESS, 0);
  msg.writeUInt16BE(msg.length - STUN_HEADER_SIZE, 2);
  msg.set(buf.subarray(off + 4, off + STUN_HEADER_SIZE), 4); // cookie + transaction ID
  let p = STUN_HEADER_SIZE;
  msg.writeUInt16BE(ATTR_XOR_MAPPED_ADDRESS, p);
  msg.writeUInt16BE(attrLen, p + 2);
  msg[p + 5] = v4 ? FAMILY_IPV4 : FAMILY_IPV6;
  msg.writeUInt16BE(port ^ (STUN_MAGIC_COOKIE >>> 16), p + 6);
  for (let i = 0; i < size; i++) msg[p + 8 + i] = src[addrOff + i]! ^ msg[4 + i]!;
  p += 4 + attrLen;
  appendFingerprint(msg, p);
  return msg;
}
