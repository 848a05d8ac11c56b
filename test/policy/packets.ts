/** Hand-built IP packets for the filter tests (checksums left zero: the filter does not read them). */
import { isIPv4 } from 'node:net';
import { parseAddress } from '../../src/ip/prefix.js';

export interface PacketSpec {
  src: string;
  dst: string;
  proto: 'tcp' | 'udp' | 'icmp';
  sport?: number;
  dport?: number;
  /** TCP flags byte (default SYN). */
  flags?: number;
  /** ICMP type/code (default echo request), echo id in sport. */
  type?: number;
  code?: number;
  /** Bytes after the transport header (an ICMP error's quoted packet). */
  payload?: Buffer;
  /** Fragment: first (more fragments, offset 0) or later (offset 8 bytes * n). */
  fragment?: { id: number; offset: number; more: boolean };
}

export const SYN = 0x02;
export const SYN_ACK = 0x12;
export const ACK = 0x10;

function l4(spec: PacketSpec, v6: boolean): Buffer {
  const payload = spec.payload ?? Buffer.alloc(0);
  if (spec.proto === 'tcp') {
    const h = Buffer.alloc(20);
    h.writeUInt16BE(spec.sport ?? 40000, 0);
    h.writeUInt16BE(spec.dport ?? 80, 2);
    h[12] = 5 << 4;
    h[13] = spec.flags ?? SYN;
    return Buffer.concat([h, payload]);
  }
  if (spec.proto === 'udp') {
    const h = Buffer.alloc(8);
    h.writeUInt16BE(spec.sport ?? 40000, 0);
    h.writeUInt16BE(spec.dport ?? 53, 2);
    h.writeUInt16BE(8 + payload.length, 4);
    return Buffer.concat([h, payload]);
  }
  const h = Buffer.alloc(8);
  h[0] = spec.type ?? (v6 ? 128 : 8);
  h[1] = spec.code ?? 0;
  h.writeUInt16BE(spec.sport ?? 7, 4);
  return Buffer.concat([h, payload]);
}

const PROTO = { tcp: 6, udp: 17 } as const;

export function packet(spec: PacketSpec): Buffer {
  const v6 = !isIPv4(spec.src);
  const proto = spec.proto === 'icmp' ? (v6 ? 58 : 1) : PROTO[spec.proto];
  let body = l4(spec, v6);
  const src = Buffer.from(parseAddress(spec.src)!);
  const dst = Buffer.from(parseAddress(spec.dst)!);
  const f = spec.fragment;
  if (f && f.offset > 0) body = Buffer.alloc(16, 0xab); // a later fragment carries no transport header
  if (!v6) {
    const h = Buffer.alloc(20);
    h[0] = 0x45;
    h.writeUInt16BE(20 + body.length, 2);
    if (f) {
      h.writeUInt16BE(f.id, 4);
      h.writeUInt16BE((f.more ? 0x2000 : 0) | (f.offset & 0x1fff), 6);
    }
    h[8] = 64;
    h[9] = proto;
    src.copy(h, 12);
    dst.copy(h, 16);
    return Buffer.concat([h, body]);
  }
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h[7] = 64;
  src.copy(h, 8);
  dst.copy(h, 24);
  if (f) {
    const fh = Buffer.alloc(8);
    fh[0] = proto;
    fh.writeUInt16BE((f.offset << 3) | (f.more ? 1 : 0), 2);
    fh.writeUInt32BE(f.id, 4);
    body = Buffer.concat([fh, body]);
    h[6] = 44;
  } else {
    h[6] = proto;
  }
  h.writeUInt16BE(body.length, 4);
  return Buffer.concat([h, body]);
}

/** An ICMP error (v4 type 3 / v6 type 1 by default) from `src` to `dst` quoting `quoted`. */
export function icmpError(src: string, dst: string, quoted: Buffer, type?: number, code = 3): Buffer {
  const v6 = !isIPv4(src);
  return packet({ src, dst, proto: 'icmp', type: type ?? (v6 ? 1 : 3), code, sport: 0, payload: quoted.subarray(0, v6 ? 1232 : 548) });
}

/** Ones' complement checksum over buf (0 when a checksum field inside it is right). */
export function checksum(buf: Buffer, initial = 0): number {
  let sum = initial;
  for (let i = 0; i + 1 < buf.length; i += 2) sum += buf.readUInt16BE(i);
  if (buf.length % 2) sum += buf[buf.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}
