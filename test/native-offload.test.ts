/**
 * The TUN offloads' packet work, byte by byte, through the addon's test-only exports (no device):
 * a 64 KB TCP super-packet split into segments whose lengths, sequence numbers, flags and
 * checksums are checked here with an independent checksum, and the kernel's GRO rules for
 * coalescing segments on write. That the kernel accepts what we write is judged by
 * test/native-offload-tun.test.ts (real TUN, real TCP).
 */
import { describe, expect, it } from 'vitest';
import { offloadTesting } from '../src/tun/native.js';

const VNET = 10;
const GSO_TCPV4 = 1;
const GSO_TCPV6 = 4;
const GSO_UDP_L4 = 5;
const NEEDS_CSUM = 1;
const ACK = 0x10;
const PSH = 0x08;
const FIN = 0x01;
const CWR = 0x80;

/** RFC 1071, written plainly: 16-bit big-endian words, end-around carry. */
function sum16(b: Buffer, start = 0, end = b.length, init = 0): number {
  let s = init;
  for (let i = start; i < end; i += 2) s += (b[i] << 8) | (i + 1 < end ? b[i + 1] : 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

function pseudo(pkt: Buffer, v6: boolean, proto: number, l4len: number): number {
  const src = v6 ? pkt.subarray(8, 40) : pkt.subarray(12, 20);
  return sum16(Buffer.concat([src, Buffer.from([0, proto, l4len >> 8, l4len & 0xff])]));
}

/** True when the packet's IPv4 header (if any) and TCP/UDP checksum verify. */
function checksumsVerify(pkt: Buffer): boolean {
  const v6 = pkt[0] >> 4 === 6;
  const l3 = v6 ? 40 : (pkt[0] & 15) * 4;
  if (!v6 && sum16(pkt, 0, l3) !== 0xffff) return false;
  const proto = v6 ? pkt[6] : pkt[9];
  return sum16(pkt, l3, pkt.length, pseudo(pkt, v6, proto, pkt.length - l3)) === 0xffff;
}

interface Tcp {
  v6?: boolean;
  seq: number;
  ack?: number;
  flags?: number;
  payload: Buffer;
  window?: number;
  ttl?: number;
  id?: number;
  options?: Buffer;
  sport?: number;
}

/** A TCP/IP packet with correct checksums (or the CHECKSUM_PARTIAL pseudo sum with partial). */
function tcpPacket(t: Tcp, partial = false): Buffer {
  const v6 = t.v6 ?? false;
  const opts = t.options ?? Buffer.alloc(0);
  const l3 = v6 ? 40 : 20;
  const thl = 20 + opts.length;
  const pkt = Buffer.alloc(l3 + thl + t.payload.length);
  if (v6) {
    pkt[0] = 0x60;
    pkt.writeUInt16BE(thl + t.payload.length, 4);
    pkt[6] = 6;
    pkt[7] = t.ttl ?? 64;
    Buffer.from('fd000000000000000000000000000001fd000000000000000000000000000002', 'hex').copy(pkt, 8);
  } else {
    pkt[0] = 0x45;
    pkt.writeUInt16BE(pkt.length, 2);
    pkt.writeUInt16BE(t.id ?? 0x1234, 4);
    pkt[6] = 0x40; // DF
    pkt[8] = t.ttl ?? 64;
    pkt[9] = 6;
    Buffer.from([100, 64, 0, 1, 100, 64, 0, 2]).copy(pkt, 12);
    pkt.writeUInt16BE(~sum16(pkt, 0, 20) & 0xffff, 10);
  }
  const th = l3;
  pkt.writeUInt16BE(t.sport ?? 40000, th);
  pkt.writeUInt16BE(5201, th + 2);
  pkt.writeUInt32BE(t.seq >>> 0, th + 4);
  pkt.writeUInt32BE(t.ack ?? 777, th + 8);
  pkt[th + 12] = (thl / 4) << 4;
  pkt[th + 13] = t.flags ?? ACK;
  pkt.writeUInt16BE(t.window ?? 500, th + 14);
  opts.copy(pkt, th + 20);
  t.payload.copy(pkt, th + thl);
  const ps = pseudo(pkt, v6, 6, pkt.length - l3);
  pkt.writeUInt16BE(partial ? ps : ~sum16(pkt, l3, pkt.length, ps) & 0xffff, th + 16);
  return pkt;
}

function vnetHeader(f: { flags?: number; gsoType?: number; hdrLen?: number; gsoSize?: number; csumStart?: number; csumOffset?: number }): Buffer {
  const h = Buffer.alloc(VNET);
  h[0] = f.flags ?? 0;
  h[1] = f.gsoType ?? 0;
  h.writeUInt16LE(f.hdrLen ?? 0, 2);
  h.writeUInt16LE(f.gsoSize ?? 0, 4);
  h.writeUInt16LE(f.csumStart ?? 0, 6);
  h.writeUInt16LE(f.csumOffset ?? 0, 8);
  return h;
}

function pattern(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed * 13 + (i >> 8)) & 0xff;
  return b;
}

const SLOT = 1536;
const MSS = 1368;
const TIMESTAMPS = Buffer.from([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);

describe('TUN read: a TSO super-packet is split into plain packets', () => {
  for (const v6 of [false, true]) {
    it(`64 KB IPv${v6 ? 6 : 4} TCP super-packet: lengths, seq, flags, ids and checksums of every segment`, () => {
      const l3 = v6 ? 40 : 20;
      const hdr = l3 + 20 + TIMESTAMPS.length;
      const payload = pattern(65535 - hdr);
      const seq = 0xfffff000; // wraps inside the packet
      const superPkt = tcpPacket({ v6, seq, flags: ACK | PSH | FIN | CWR, payload, options: TIMESTAMPS, id: 0xfffe }, true);
      const read = Buffer.concat([vnetHeader({ flags: NEEDS_CSUM, gsoType: v6 ? GSO_TCPV6 : GSO_TCPV4, hdrLen: hdr, gsoSize: MSS, csumStart: l3, csumOffset: 16 }), superPkt]);
      const segs = offloadTesting.offloadSplit(read, SLOT)!;
      const expected = Math.ceil(payload.length / MSS);
      console.log(`IPv${v6 ? 6 : 4}: ${superPkt.length} B super-packet -> ${segs.length} segments, ${segs.filter(checksumsVerify).length} with valid checksums`);
      expect(segs.length).toBe(expected);
      let at = 0;
      segs.forEach((s, i) => {
        const last = i === segs.length - 1;
        expect(checksumsVerify(s)).toBe(true);
        expect(s.length).toBe(hdr + (last ? payload.length - at : MSS));
        if (v6) expect(s.readUInt16BE(4)).toBe(s.length - 40);
        else {
          expect(s.readUInt16BE(2)).toBe(s.length);
          expect(s.readUInt16BE(4)).toBe((0xfffe + i) & 0xffff);
        }
        expect(s.readUInt32BE(l3 + 4)).toBe((seq + at) >>> 0);
        const flags = s[l3 + 13];
        expect(flags & ACK).toBe(ACK);
        expect(!!(flags & (PSH | FIN))).toBe(last);
        expect(!!(flags & CWR)).toBe(i === 0);
        expect(s.subarray(l3 + 20, hdr).equals(TIMESTAMPS)).toBe(true);
        expect(s.subarray(hdr).equals(payload.subarray(at, at + s.length - hdr))).toBe(true);
        at += s.length - hdr;
      });
      expect(at).toBe(payload.length);
    });
  }

  it('a USO super-packet becomes UDP datagrams with their own lengths and checksums', () => {
    const payload = pattern(10000, 3);
    const pkt = Buffer.alloc(28 + payload.length);
    pkt[0] = 0x45;
    pkt.writeUInt16BE(pkt.length, 2);
    pkt[8] = 64;
    pkt[9] = 17;
    Buffer.from([100, 64, 0, 1, 100, 64, 0, 2]).copy(pkt, 12);
    pkt.writeUInt16BE(5000, 20);
    pkt.writeUInt16BE(5001, 22);
    pkt.writeUInt16BE(pkt.length - 20, 24);
    payload.copy(pkt, 28);
    const segs = offloadTesting.offloadSplit(Buffer.concat([vnetHeader({ flags: NEEDS_CSUM, gsoType: GSO_UDP_L4, hdrLen: 28, gsoSize: 1400, csumStart: 20, csumOffset: 6 }), pkt]), SLOT)!;
    expect(segs.length).toBe(8);
    expect(segs.every(checksumsVerify)).toBe(true);
    expect(segs.map((s) => s.readUInt16BE(24))).toEqual([...Array(7).fill(1408), 10000 - 7 * 1400 + 8]);
    expect(Buffer.concat(segs.map((s) => s.subarray(28))).equals(payload)).toBe(true);
  });

  it('a plain read left CHECKSUM_PARTIAL by the kernel gets its checksum completed', () => {
    const pkt = tcpPacket({ seq: 5, payload: pattern(300) }, true);
    const [out] = offloadTesting.offloadSplit(Buffer.concat([vnetHeader({ flags: NEEDS_CSUM, csumStart: 20, csumOffset: 16 }), pkt]), SLOT)!;
    expect(checksumsVerify(out)).toBe(true);
  });

  it('lying vnet headers are dropped, never read past the packet', () => {
    const pkt = tcpPacket({ seq: 1, payload: pattern(5000) }, true);
    const bad = [
      vnetHeader({ gsoType: GSO_TCPV6, gsoSize: MSS }), // IPv4 packet called IPv6
      vnetHeader({ gsoType: GSO_TCPV4, gsoSize: 0 }), // no segment size
      vnetHeader({ gsoType: GSO_TCPV4, gsoSize: 4000 }), // segments larger than a slot
      vnetHeader({ gsoType: GSO_UDP_L4, gsoSize: MSS }), // UDP GSO on a TCP packet
      vnetHeader({ gsoType: 77, gsoSize: MSS }), // unknown type
    ];
    expect(bad.map((h) => offloadTesting.offloadSplit(Buffer.concat([h, pkt]), SLOT))).toEqual(bad.map(() => null));
    // A checksum beyond the packet, on a packet that fits a slot (so only the bounds check refuses it).
    const small = tcpPacket({ seq: 1, payload: pattern(300) }, true);
    expect(offloadTesting.offloadSplit(Buffer.concat([vnetHeader({ flags: NEEDS_CSUM, csumStart: 60000, csumOffset: 16 }), small]), SLOT)).toBeNull();
    expect(offloadTesting.offloadSplit(Buffer.concat([vnetHeader({ flags: NEEDS_CSUM, csumStart: 20, csumOffset: 16 }), small]), SLOT)).not.toBeNull();
    expect(offloadTesting.offloadSplit(Buffer.concat([vnetHeader({ gsoType: GSO_TCPV4, gsoSize: MSS }), pkt.subarray(0, 30)]), SLOT)).toBeNull();
  });
});

/** Lays packets out in one slab, as the device's open slab holds them. */
function slabOf(pkts: Buffer[]) {
  const slab = Buffer.alloc(pkts.length * SLOT);
  const offsets = new Int32Array(pkts.length);
  const lens = new Int32Array(pkts.length);
  pkts.forEach((p, i) => {
    p.copy(slab, i * SLOT);
    offsets[i] = i * SLOT;
    lens[i] = p.length;
  });
  return offloadTesting.offloadCoalesce(slab, offsets, lens, pkts.length);
}

function segments(n: number, opts: Partial<Tcp> & { size?: number; first?: number } = {}): Buffer[] {
  const size = opts.size ?? MSS;
  const first = opts.first ?? 1000;
  return Array.from({ length: n }, (_, i) => tcpPacket({ id: 0x1234 + i, ...opts, seq: first + i * size, payload: pattern(size, i) }));
}

describe('TUN write: segments of one flow are coalesced as the kernel GRO would', () => {
  for (const v6 of [false, true]) {
    it(`IPv${v6 ? 6 : 4}: 40 contiguous segments become one GSO write whose header and payload add up`, () => {
      const segs = segments(40, { v6, options: TIMESTAMPS });
      const out = slabOf(segs);
      expect(out.length).toBe(1);
      const w = out[0];
      const l3 = v6 ? 40 : 20;
      const hdr = l3 + 32;
      expect(w[0]).toBe(NEEDS_CSUM);
      expect(w[1]).toBe(v6 ? GSO_TCPV6 : GSO_TCPV4);
      expect([w.readUInt16LE(2), w.readUInt16LE(4), w.readUInt16LE(6), w.readUInt16LE(8)]).toEqual([hdr, MSS, l3, 16]);
      const pkt = w.subarray(VNET);
      expect(pkt.length).toBe(hdr + 40 * MSS);
      if (v6) expect(pkt.readUInt16BE(4)).toBe(pkt.length - 40);
      else {
        expect(pkt.readUInt16BE(2)).toBe(pkt.length);
        expect(sum16(pkt, 0, 20)).toBe(0xffff);
      }
      // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; completing it must verify.
      expect(pkt.readUInt16BE(l3 + 16)).toBe(pseudo(pkt, v6, 6, pkt.length - l3));
      const done = Buffer.from(pkt);
      done.writeUInt16BE(0, l3 + 16);
      done.writeUInt16BE(~sum16(done, l3, done.length, pseudo(done, v6, 6, done.length - l3)) & 0xffff, l3 + 16);
      expect(checksumsVerify(done)).toBe(true);
      expect(pkt.subarray(hdr).equals(Buffer.concat(segs.map((s) => s.subarray(hdr))))).toBe(true);
    });
  }

  it('splitting a coalesced write gives back the original segments', () => {
    const segs = segments(20, { options: TIMESTAMPS });
    const [w] = slabOf(segs);
    const again = offloadTesting.offloadSplit(w, SLOT)!;
    expect(again.length).toBe(20);
    again.forEach((s, i) => expect(s.equals(segs[i])).toBe(true));
  });

  it('follows the merge rules: PSH ends a unit, a short segment ends it, gaps, other acks, windows, TTLs and bad checksums do not merge', () => {
    const count = (pkts: Buffer[]) => slabOf(pkts).map((w) => (w[1] === 0 ? 1 : (w.length - VNET - 40) / MSS));
    const s = segments(6);
    const psh = segments(6);
    psh[2] = tcpPacket({ seq: 1000 + 2 * MSS, flags: ACK | PSH, payload: pattern(MSS, 2) });
    expect(count(psh)).toEqual([3, 3]); // PSH only at the end of a unit
    const short = [...segments(3), tcpPacket({ seq: 1000 + 3 * MSS, payload: pattern(100) }), tcpPacket({ seq: 1000 + 3 * MSS + 100, payload: pattern(MSS) })];
    expect(slabOf(short).length).toBe(2); // nothing after a shorter segment
    expect(count([s[0], s[1], s[3], s[4]])).toEqual([2, 2]); // a gap
    expect(count([s[0], s[1], tcpPacket({ seq: 1000 + 2 * MSS, ack: 999, payload: pattern(MSS) })])).toEqual([2, 1]);
    expect(count([s[0], s[1], tcpPacket({ seq: 1000 + 2 * MSS, window: 501, payload: pattern(MSS) })])).toEqual([2, 1]);
    expect(count([s[0], s[1], tcpPacket({ seq: 1000 + 2 * MSS, ttl: 63, payload: pattern(MSS) })])).toEqual([2, 1]);
    const corrupt = Buffer.from(s[2]);
    corrupt[corrupt.length - 1] ^= 0xff;
    expect(count([s[0], s[1], corrupt, s[3]])).toEqual([2, 1, 1]);
    const syn = tcpPacket({ seq: 1000, flags: 0x02 | ACK, payload: pattern(MSS) });
    expect(count([syn, s[1]])).toEqual([1, 1]);
    expect(slabOf(segments(100)).length).toBe(3); // at most 64 KB: 47 + 47 + 6
    // Two flows interleaved: each coalesced, neither reordered.
    const other = segments(4, { first: 5000000, sport: 40001 });
    const mixed = slabOf([s[0], other[0], s[1], other[1], s[2], other[2]]);
    expect(mixed.length).toBe(2);
    expect(mixed.map((w) => w.subarray(VNET).readUInt16BE(20))).toEqual([40000, 40001]);
  });

  it('non-TCP and fragments are written alone behind an empty vnet header', () => {
    const udp = Buffer.alloc(60);
    udp[0] = 0x45;
    udp.writeUInt16BE(60, 2);
    udp[9] = 17;
    const frag = tcpPacket({ seq: 1000, payload: pattern(MSS) });
    frag.writeUInt16BE(0x6000, 6); // DF (as the others) and MF: only the fragment rule keeps it apart
    const out = slabOf([udp, udp, frag, segments(1, { first: 1000 + MSS })[0]]);
    expect(out.length).toBe(4);
    expect(out.every((w) => w.subarray(0, VNET).equals(Buffer.alloc(VNET)))).toBe(true);
  });
});
