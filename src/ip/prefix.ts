import { isIPv4, isIPv6 } from 'node:net';

/** An IP network: address bytes (4 or 16) and prefix length. */
export interface Prefix {
  family: 4 | 6;
  addr: Uint8Array;
  bits: number;
}

/** Parse an IPv4 or IPv6 address into its bytes; null when it is not one. */
export function parseAddress(text: string): Uint8Array | null {
  if (isIPv4(text)) return ipv4Bytes(text);
  if (!isIPv6(text)) return null;
  let s = text;
  const out = new Uint8Array(16);
  // An embedded dotted IPv4 tail (::ffff:1.2.3.4) becomes two hex groups.
  const v4 = s.match(/(\d+\.\d+\.\d+\.\d+)$/);
  if (v4) {
    const b = v4[1].split('.').map(Number);
    s = s.slice(0, -v4[1].length) + ((b[0] << 8) | b[1]).toString(16) + ':' + ((b[2] << 8) | b[3]).toString(16);
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  return out;
}

/**
 * The bytes of a dotted quad that isIPv4 accepted (four decimal parts of 0-255, no leading zeros,
 * nothing else), read digit by digit: it is parsed for every endpoint and address in a record.
 */
function ipv4Bytes(text: string): Uint8Array {
  const out = new Uint8Array(4);
  let part = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === DOT) part++;
    else out[part] = out[part] * 10 + (c - ZERO);
  }
  return out;
}

const DOT = 0x2e;
const ZERO = 0x30;

export function formatAddress(addr: Uint8Array): string {
  if (addr.length === 4) return addr.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((addr[i] << 8) | addr[i + 1]).toString(16));
  // Compress the longest run of zero groups, as RFC 5952 asks.
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return groups.slice(0, best).join(':') + '::' + groups.slice(best + bestLen).join(':');
}

/** "10.0.0.1/24", "fd00::1/64", or a bare address (a host prefix). Null when malformed. */
export function parsePrefix(text: string): Prefix | null {
  const [a, b, extra] = text.trim().split('/');
  if (extra !== undefined) return null;
  const addr = parseAddress(a);
  if (!addr) return null;
  const max = addr.length * 8;
  const bits = b === undefined ? max : /^\d{1,3}$/.test(b) ? Number(b) : NaN;
  if (!(bits >= 0 && bits <= max)) return null;
  return { family: addr.length === 4 ? 4 : 6, addr, bits };
}

export function formatPrefix(p: Prefix): string {
  return `${formatAddress(p.addr)}/${p.bits}`;
}

/** The prefix with host bits cleared (10.1.2.3/8 -> 10.0.0.0/8), as routes need. */
export function networkOf(p: Prefix): Prefix {
  const addr = new Uint8Array(p.addr.length);
  for (let i = 0; i < addr.length; i++) {
    const keep = Math.max(0, Math.min(8, p.bits - i * 8));
    addr[i] = p.addr[i] & (0xff << (8 - keep));
  }
  return { family: p.family, addr, bits: p.bits };
}
