/**
 * "Administratively prohibited" answers for packets the policy refuses to send, written back to
 * the TUN so the local sender fails at once (Linux ends a connecting TCP socket on it: EHOSTUNREACH
 * for IPv4, EACCES for IPv6) instead of waiting for a timeout. Built in one preallocated buffer.
 *
 * | family | IP header                               | ICMP                         | quoted           |
 * | ------ | --------------------------------------- | ---------------------------- | ---------------- |
 * | IPv4   | 20 bytes, TTL 64, proto 1, src = the    | type 3 code 13, checksum,    | the refused      |
 * |        | refused packet's dst, dst = its src     | 4 unused bytes               | packet, ≤ 548 B  |
 * | IPv6   | 40 bytes, hop limit 64, next header 58, | type 1 code 1, checksum over | the refused      |
 * |        | addresses swapped the same way          | the pseudo-header, 4 unused  | packet, ≤ 1232 B |
 *
 * The quote limits keep the answer within 576 bytes (IPv4, RFC 1812) and 1280 bytes (IPv6, RFC 4443).
 */
const QUOTE_V4 = 576 - 28;
const QUOTE_V6 = 1280 - 48;

/** Ones' complement sum of buf[start, end) added to `sum` (16-bit big-endian words). */
function sum16(buf: Buffer, start: number, end: number, sum: number): number {
  let i = start;
  for (; i + 1 < end; i += 2) sum += (buf[i] << 8) | buf[i + 1];
  if (i < end) sum += buf[i] << 8;
  return sum;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export class IcmpRejecter {
  readonly buffer = Buffer.alloc(1280);

  /** Writes the answer to the packet at buf[off, off+len) (family 4 or 6) into `buffer`; returns its length. */
  build(buf: Buffer, off: number, len: number, family: number): number {
    const out = this.buffer;
    out.fill(0);
    if (family === 4) {
      const quote = Math.min(len, QUOTE_V4);
      const total = 28 + quote;
      out[0] = 0x45;
      out.writeUInt16BE(total, 2);
      out[8] = 64;
      out[9] = 1;
      buf.copy(out, 12, off + 16, off + 20); // from the destination we refused to reach
      buf.copy(out, 16, off + 12, off + 16);
      out.writeUInt16BE(fold(sum16(out, 0, 20, 0)), 10);
      out[20] = 3;
      out[21] = 13;
      buf.copy(out, 28, off, off + quote);
      out.writeUInt16BE(fold(sum16(out, 20, total, 0)), 22);
      return total;
    }
    const quote = Math.min(len, QUOTE_V6);
    const payload = 8 + quote;
    out[0] = 0x60;
    out.writeUInt16BE(payload, 4);
    out[6] = 58;
    out[7] = 64;
    buf.copy(out, 8, off + 24, off + 40);
    buf.copy(out, 24, off + 8, off + 24);
    out[40] = 1;
    out[41] = 1;
    buf.copy(out, 48, off, off + quote);
    // Pseudo-header: source, destination, upper-layer length, next header.
    let sum = sum16(out, 8, 40, 0) + payload + 58;
    sum = sum16(out, 40, 40 + payload, sum);
    out.writeUInt16BE(fold(sum), 42);
    return 40 + payload;
  }
}
