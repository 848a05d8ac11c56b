import { formatAddress } from '../ip/prefix.js';

/**
 * A UDP endpoint in the native layer's fixed 20-byte form: 16 bytes IPv6 address (IPv4 as
 * ::ffff:a.b.c.d), 2 bytes port big-endian, 2 zero bytes. Fixed-size so batches of them sit in
 * one buffer beside the packets and comparing/copying them allocates nothing.
 */
export const ENDPOINT_SIZE = 20;

const V4_MAPPED_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

export function makeEndpoint(addr: Uint8Array, port: number): Buffer {
  const ep = Buffer.alloc(ENDPOINT_SIZE);
  if (addr.length === 4) {
    ep.set(V4_MAPPED_PREFIX, 0);
    ep.set(addr, 12);
  } else {
    ep.set(addr, 0);
  }
  ep.writeUInt16BE(port, 16);
  return ep;
}

function isV4Mapped(ep: Uint8Array, off: number): boolean {
  for (let i = 0; i < 12; i++) if (ep[off + i] !== V4_MAPPED_PREFIX[i]) return false;
  return true;
}

export function endpointAddress(ep: Uint8Array, off = 0): Uint8Array {
  return isV4Mapped(ep, off) ? ep.slice(off + 12, off + 16) : ep.slice(off, off + 16);
}

export function endpointPort(ep: Uint8Array, off = 0): number {
  return (ep[off + 16] << 8) | ep[off + 17];
}

/** "192.0.2.1:51820" or "[fd00::1]:51820". */
export function formatEndpoint(ep: Uint8Array, off = 0): string {
  const addr = endpointAddress(ep, off);
  const host = formatAddress(addr);
  return addr.length === 4 ? `${host}:${endpointPort(ep, off)}` : `[${host}]:${endpointPort(ep, off)}`;
}

export function sameEndpoint(a: Uint8Array, aOff: number, b: Uint8Array, bOff: number): boolean {
  for (let i = 0; i < 18; i++) if (a[aOff + i] !== b[bOff + i]) return false;
  return true;
}

/**
 * The part of an endpoint's address a rate limit is kept for: the whole IPv4 address, but only
 * the /64 of an IPv6 one (one host commonly holds a whole /64, so per-/128 buckets would be free).
 */
export function sourceKey(ep: Buffer, off = 0): string {
  return ep.toString('latin1', off, off + (isV4Mapped(ep, off) ? 16 : 8));
}

/** An endpoint's 18 address and port bytes as a map key. */
export function endpointKey(ep: Buffer, off = 0): string {
  return ep.toString('latin1', off, off + 18);
}
