/**
 * DNS wire format (RFC 1035, EDNS0 from RFC 6891), just enough for a small authoritative
 * responder: parse one query defensively, build one response with name compression.
 *
 * Names are kept as label lists (raw bytes), never as dotted strings: a label may itself
 * contain a '.' byte, and the question must be echoed exactly as it was asked.
 */

export const TYPE = { A: 1, NS: 2, SOA: 6, AAAA: 28, OPT: 41, ANY: 255 } as const;
export const CLASS = { IN: 1, ANY: 255 } as const;
/** Response codes; values above 15 only fit with EDNS (the high bits travel in the OPT record). */
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5, BADVERS: 16 } as const;
export const OPCODE_QUERY = 0;

export const HEADER_SIZE = 12;
const MAX_LABEL = 63;
const MAX_NAME = 255; // wire length, including the length bytes and the root
/** What we advertise in our OPT record: the EDNS "flag day 2020" size that avoids fragmentation. */
const EDNS_UDP_SIZE = 1232;

// Header flag bits (RFC 1035 4.1.1).
const QR = 0x8000;
const AA = 0x0400;
const RD = 0x0100;

export type Name = Uint8Array[];

export interface Question {
  name: Name;
  type: number;
  class: number;
}

export interface Edns {
  version: number;
  udpSize: number;
}

export interface Query {
  id: number;
  opcode: number;
  /** Recursion desired: echoed in the response (we never recurse, so RA stays 0). */
  rd: boolean;
  /** Null only when the opcode is not QUERY (its body is not parsed) or the question is unreadable. */
  question: Question | null;
  edns: Edns | null;
  /** Why the message is malformed, or null when it is well-formed. */
  error: string | null;
}

export interface Soa {
  mname: Name;
  rname: Name;
  serial: number;
  refresh: number;
  retry: number;
  expire: number;
  /** Negative-caching TTL (RFC 2308). */
  minimum: number;
}

export interface ResourceRecord {
  name: Name;
  type: number;
  ttl: number;
  /** Raw RDATA (4 bytes for A, 16 for AAAA) or an SOA, whose names are compressed. */
  data: Uint8Array | Soa;
}

export interface Response {
  id: number;
  opcode: number;
  rd: boolean;
  aa: boolean;
  rcode: number;
  question?: Question | null;
  answers?: ResourceRecord[];
  authority?: ResourceRecord[];
  /** Append a minimal OPT record (answer EDNS with EDNS). Required when rcode > 15. */
  edns?: boolean;
}

class FormatError extends Error {}

/** Reads big-endian fields, throwing FormatError instead of reading past the end. */
class Reader {
  offset = 0;
  constructor(readonly buf: Uint8Array) {}

  private need(n: number): void {
    if (this.offset + n > this.buf.length) throw new FormatError('truncated message');
  }
  u16(): number {
    this.need(2);
    const v = (this.buf[this.offset] << 8) | this.buf[this.offset + 1];
    this.offset += 2;
    return v;
  }
  u32(): number {
    const hi = this.u16();
    return hi * 0x10000 + this.u16();
  }
  skip(n: number): void {
    this.need(n);
    this.offset += n;
  }

  /**
   * A possibly compressed name. Each pointer must point strictly before the place the
   * current run of labels started, so every jump moves backwards and loops cannot exist.
   */
  name(): Name {
    const buf = this.buf;
    const labels: Name = [];
    let pos = this.offset;
    let runStart = pos;
    let end = -1; // where reading continues after the name: set at the first pointer or the root
    let wireLength = 1;
    for (;;) {
      if (pos >= buf.length) throw new FormatError('truncated name');
      const len = buf[pos];
      if (len === 0) {
        if (end < 0) end = pos + 1;
        break;
      }
      if ((len & 0xc0) === 0xc0) {
        if (pos + 1 >= buf.length) throw new FormatError('truncated compression pointer');
        const target = ((len & 0x3f) << 8) | buf[pos + 1];
        if (target >= runStart) throw new FormatError('compression pointer loops or points forward');
        if (end < 0) end = pos + 2;
        pos = runStart = target;
        continue;
      }
      if (len > MAX_LABEL) throw new FormatError('bad label type or length');
      if (pos + 1 + len > buf.length) throw new FormatError('label runs past the end');
      wireLength += len + 1;
      if (wireLength > MAX_NAME) throw new FormatError('name longer than 255 bytes');
      labels.push(buf.slice(pos + 1, pos + 1 + len));
      pos += 1 + len;
    }
    this.offset = end;
    return labels;
  }
}

/**
 * Parse a message received by a server. Returns null when it must be dropped without an
 * answer: the header is incomplete, or it is itself a response (answering responses could
 * loop two servers into each other). Otherwise the result carries `error` when the rest is
 * malformed, so the caller can answer FORMERR with the header's ID.
 */
export function parseQuery(buf: Uint8Array): Query | null {
  if (buf.length < HEADER_SIZE) return null;
  const r = new Reader(buf);
  const id = r.u16();
  const flags = r.u16();
  if (flags & QR) return null;
  const [qdcount, ancount, nscount, arcount] = [r.u16(), r.u16(), r.u16(), r.u16()];
  const query: Query = { id, opcode: (flags >> 11) & 0xf, rd: (flags & RD) !== 0, question: null, edns: null, error: null };
  if (query.opcode !== OPCODE_QUERY) return query; // other opcodes' bodies have other meanings
  try {
    if (qdcount !== 1) throw new FormatError(`expected one question, got ${qdcount}`);
    query.question = { name: r.name(), type: r.u16(), class: r.u16() };
    // Answer and authority records have no business in a query but are legal; skip them.
    // The additional section may hold one OPT record (EDNS0); other records are skipped too.
    for (let i = 0; i < ancount + nscount + arcount; i++) {
      const name = r.name();
      const type = r.u16();
      const cls = r.u16();
      const ttl = r.u32();
      r.skip(r.u16());
      if (type !== TYPE.OPT) continue;
      if (i < ancount + nscount) throw new FormatError('OPT record outside the additional section');
      if (query.edns) throw new FormatError('more than one OPT record');
      if (name.length !== 0) throw new FormatError('OPT record not owned by the root');
      query.edns = { udpSize: Math.max(512, cls), version: (ttl >>> 16) & 0xff };
    }
    if (r.offset !== buf.length) throw new FormatError('trailing bytes after the last record');
  } catch (e) {
    if (!(e instanceof FormatError)) throw e;
    query.error = e.message;
    query.edns = null; // a FORMERR answer does not carry OPT (RFC 6891 7)
  }
  return query;
}

/**
 * Builds a message into a fixed buffer. Names are compressed against every name written
 * before them, so an answer's owner points at the question and an SOA at the zone's suffix
 * of the question: with one question of at most 255 bytes, one A/AAAA answer or one SOA,
 * and one OPT, a response stays under 340 bytes, well inside the 512 of plain UDP DNS.
 */
class Writer {
  private readonly buf = new Uint8Array(512);
  private length = 0;
  private readonly names = new Map<string, number>();

  private need(n: number): void {
    if (this.length + n > this.buf.length) throw new RangeError('DNS response larger than 512 bytes');
  }
  u8(v: number): void {
    this.need(1);
    this.buf[this.length++] = v;
  }
  u16(v: number): void {
    this.u8(v >>> 8);
    this.u8(v & 0xff);
  }
  u32(v: number): void {
    this.u16(Math.floor(v / 0x10000) & 0xffff);
    this.u16(v & 0xffff);
  }
  bytes(b: Uint8Array): void {
    this.need(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  name(name: Name): void {
    for (let i = 0; i < name.length; i++) {
      const key = suffixKey(name, i);
      const at = this.names.get(key);
      if (at !== undefined) return this.u16(0xc000 | at);
      if (this.length < 0x4000) this.names.set(key, this.length);
      this.u8(name[i].length);
      this.bytes(name[i]);
    }
    this.u8(0);
  }
  /** Write a 16-bit RDLENGTH placeholder; the returned function fills it in. */
  lengthPrefix(): () => void {
    const at = this.length;
    this.u16(0);
    return () => {
      const n = this.length - at - 2;
      this.buf[at] = n >>> 8;
      this.buf[at + 1] = n & 0xff;
    };
  }
  finish(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.length));
  }
}

/** Compression matches names case-insensitively, as DNS compares them. */
function suffixKey(name: Name, from: number): string {
  return JSON.stringify(name.slice(from).map((l) => labelText(l)));
}

export function buildResponse(res: Response): Buffer {
  const w = new Writer();
  const answers = res.answers ?? [];
  const authority = res.authority ?? [];
  const edns = res.edns || res.rcode > 15;
  w.u16(res.id);
  w.u16(QR | ((res.opcode & 0xf) << 11) | (res.aa ? AA : 0) | (res.rd ? RD : 0) | (res.rcode & 0xf));
  w.u16(res.question ? 1 : 0);
  w.u16(answers.length);
  w.u16(authority.length);
  w.u16(edns ? 1 : 0);
  if (res.question) {
    w.name(res.question.name);
    w.u16(res.question.type);
    w.u16(res.question.class);
  }
  for (const rr of [...answers, ...authority]) {
    w.name(rr.name);
    w.u16(rr.type);
    w.u16(CLASS.IN);
    w.u32(rr.ttl);
    const done = w.lengthPrefix();
    if (rr.data instanceof Uint8Array) {
      w.bytes(rr.data);
    } else {
      const soa = rr.data;
      w.name(soa.mname);
      w.name(soa.rname);
      for (const v of [soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum]) w.u32(v);
    }
    done();
  }
  if (edns) {
    w.u8(0); // root owner
    w.u16(TYPE.OPT);
    w.u16(EDNS_UDP_SIZE);
    w.u32(((res.rcode >>> 4) & 0xff) * 0x1000000); // extended rcode, version 0, no DO bit
    w.u16(0); // no options
  }
  return w.finish();
}

/** A dotted name ('planner.prod', trailing dot optional) as labels; throws on an invalid name. */
export function nameFromString(text: string): Name {
  const s = text.endsWith('.') ? text.slice(0, -1) : text;
  if (s === '') return [];
  const name = s.split('.').map((l) => Buffer.from(l, 'latin1'));
  let wire = 1;
  for (const l of name) {
    if (l.length === 0 || l.length > MAX_LABEL) throw new RangeError(`bad DNS label in ${JSON.stringify(text)}`);
    wire += l.length + 1;
  }
  if (wire > MAX_NAME) throw new RangeError(`DNS name too long: ${JSON.stringify(text)}`);
  return name;
}

/** A label as lowercase text. DNS is case-insensitive for ASCII letters only (RFC 4343). */
export function labelText(label: Uint8Array): string {
  let s = '';
  for (const b of label) s += String.fromCharCode(b >= 0x41 && b <= 0x5a ? b + 0x20 : b);
  return s;
}

/** True when `name` ends with the labels of `suffix` (case-insensitively). */
export function endsWithName(name: Name, suffix: Name): boolean {
  if (suffix.length > name.length) return false;
  const offset = name.length - suffix.length;
  return suffix.every((l, i) => labelText(l) === labelText(name[offset + i]));
}
