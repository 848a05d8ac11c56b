import { PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP } from './compile.js';

/**
 * The fields of an IP packet the policy filter decides on, read in place (no allocation): one
 * reusable view per filter. Offsets are absolute into the buffer given to parse().
 *
 * | family | header           | read                                                               |
 * | ------ | ---------------- | ------------------------------------------------------------------ |
 * | IPv4   | 20..60 bytes     | IHL, total length, MF flag and fragment offset (ID), protocol, src, dst |
 * | IPv6   | 40 + extensions  | next header chain (hop-by-hop 0, routing 43, fragment 44, dest opts 60, AH 51; at most 8) |
 * | TCP    | ≥ 14 bytes here  | source port, destination port, flags (byte 13)                      |
 * | UDP    | ≥ 8 bytes        | source port, destination port                                      |
 * | ICMP   | ≥ 8 bytes        | type, code, echo identifier (bytes 4..5); errors quote a packet at +8 |
 *
 * A first fragment must carry the whole transport header above (RFC 1858 "tiny fragments" are
 * refused): the ports are decided on the first fragment only.
 */

export const FRAG_NONE = 0;
export const FRAG_FIRST = 1;
export const FRAG_LATER = 2;

/** ICMP messages that report on another packet, which they quote (v4: unreachable, source quench, redirect, time exceeded, parameter problem). */
const ICMP4_ERRORS = new Set([3, 4, 5, 11, 12]);
const ICMP6_ERRORS = new Set([1, 2, 3, 4]);
/** More extension headers than this is not a real packet. */
const MAX_EXTENSION_HEADERS = 8;

export const TCP_SYN = 0x02;
export const TCP_ACK = 0x10;
export const TCP_FIN = 0x01;
export const TCP_RST = 0x04;

/** What the policy calls a packet's protocol when its ICMP number belongs to the other family: only `*` allows it. */
const PROTO_MISMATCHED_ICMP = 255;

export class PacketView {
  family = 0;
  proto = 0;
  /** The protocol as grants name it: ICMP and ICMPv6 are both PROTO_ICMP ("icmp"). */
  grantProto = 0;
  srcOff = 0;
  dstOff = 0;
  srcPort = 0;
  dstPort = 0;
  tcpFlags = 0;
  icmpType = 0;
  icmpCode = 0;
  /** An ICMP error: the quoted packet starts at l4Off + 8. */
  icmpError = false;
  echoRequest = false;
  echoReply = false;
  fragment = FRAG_NONE;
  fragId = 0;
  l4Off = 0;
  end = 0;

  /**
   * Reads the packet at buf[off, off+len). `quoted`: a packet inside an ICMP error, usually cut
   * short, so its length field is not checked against what is there. False when malformed.
   */
  parse(buf: Buffer, off: number, len: number, quoted: boolean): boolean {
    if (len < 1) return false;
    const version = buf[off] >> 4;
    let end = off + len;
    let l4: number;
    let proto: number;
    this.fragment = FRAG_NONE;
    if (version === 4) {
      const ihl = (buf[off] & 15) * 4;
      if (ihl < 20 || len < ihl) return false;
      const total = (buf[off + 2] << 8) | buf[off + 3];
      if (!quoted) {
        if (total < ihl || total > len) return false;
        end = off + total;
      }
      const frag = (buf[off + 6] << 8) | buf[off + 7];
      const offset = frag & 0x1fff;
      if (offset !== 0) this.fragment = FRAG_LATER;
      else if (frag & 0x2000) this.fragment = FRAG_FIRST;
      this.fragId = (buf[off + 4] << 8) | buf[off + 5];
      proto = buf[off + 9];
      this.family = 4;
      this.srcOff = off + 12;
      this.dstOff = off + 16;
      l4 = off + ihl;
    } else if (version === 6) {
      if (len < 40) return false;
      const total = 40 + ((buf[off + 4] << 8) | buf[off + 5]);
      if (!quoted) {
        if (total > len) return false;
        end = off + total;
      }
      this.family = 6;
      this.srcOff = off + 8;
      this.dstOff = off + 24;
      proto = buf[off + 6];
      l4 = off + 40;
      for (let n = 0; ; n++) {
        if (proto !== 0 && proto !== 43 && proto !== 44 && proto !== 60 && proto !== 51) break;
        if (n >= MAX_EXTENSION_HEADERS || l4 + 8 > end) return false;
        const next = buf[l4];
        if (proto === 44) {
          const fo = (buf[l4 + 2] << 8) | buf[l4 + 3];
          if (fo >> 3 !== 0) this.fragment = FRAG_LATER;
          else if (fo & 1) this.fragment = FRAG_FIRST;
          this.fragId = ((buf[l4 + 4] << 24) | (buf[l4 + 5] << 16) | (buf[l4 + 6] << 8) | buf[l4 + 7]) >>> 0;
          l4 += 8;
        } else if (proto === 51) {
          l4 += (buf[l4 + 1] + 2) * 4;
        } else {
          l4 += (buf[l4 + 1] + 1) * 8;
        }
        proto = next;
      }
    } else {
      return false;
    }
    this.proto = proto;
    const icmp = (proto === PROTO_ICMP && version === 4) || (proto === PROTO_ICMPV6 && version === 6);
    this.grantProto = icmp ? PROTO_ICMP : proto === PROTO_ICMP || proto === PROTO_ICMPV6 ? PROTO_MISMATCHED_ICMP : proto;
    this.l4Off = l4;
    this.end = end;
    this.srcPort = this.dstPort = this.tcpFlags = this.icmpType = this.icmpCode = 0;
    this.icmpError = this.echoRequest = this.echoReply = false;
    if (this.fragment === FRAG_LATER) return true; // no transport header in this one
    const room = end - l4;
    if (proto === PROTO_TCP || proto === PROTO_UDP) {
      // A quoted packet need only show its ports (RFC 792: 8 bytes); a real TCP one its flags too.
      if (room < (proto === PROTO_TCP && !quoted ? 14 : 8)) return false;
      this.srcPort = (buf[l4] << 8) | buf[l4 + 1];
      this.dstPort = (buf[l4 + 2] << 8) | buf[l4 + 3];
      if (proto === PROTO_TCP && room >= 14) this.tcpFlags = buf[l4 + 13];
    } else if (icmp) {
      if (room < 8) return false;
      const type = buf[l4];
      this.icmpType = type;
      this.icmpCode = buf[l4 + 1];
      this.icmpError = version === 4 ? ICMP4_ERRORS.has(type) : ICMP6_ERRORS.has(type);
      this.echoRequest = type === (version === 4 ? 8 : 128);
      this.echoReply = type === (version === 4 ? 0 : 129);
      // The echo identifier plays the part of a port, so a reply matches its request's flow.
      if (this.echoRequest || this.echoReply) this.srcPort = (buf[l4 + 4] << 8) | buf[l4 + 5];
    }
    return true;
  }

  get isIcmp(): boolean {
    return (this.proto === PROTO_ICMP && this.family === 4) || (this.proto === PROTO_ICMPV6 && this.family === 6);
  }
}
