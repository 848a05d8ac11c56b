import { describe, it, expect } from 'vitest';
import {
  RCODE, TYPE, buildResponse, endsWithName, labelText, nameFromString, parseQuery,
} from '../../src/dns/message.js';

/** Wire-encode a dotted name by hand (no compression). */
function wireName(name: string): number[] {
  const out: number[] = [];
  for (const label of name.split('.').filter(Boolean)) out.push(label.length, ...Buffer.from(label, 'latin1'));
  return [...out, 0];
}

const u16 = (v: number) => [v >> 8, v & 0xff];

/** A query built byte by byte: header, one question, optionally an OPT record. */
function query(name: string, type: number, o: { id?: number; flags?: number; qdcount?: number; opt?: number[] } = {}): Buffer {
  const header = [...u16(o.id ?? 0x1234), ...u16(o.flags ?? 0x0100), ...u16(o.qdcount ?? 1), 0, 0, 0, 0, ...u16(o.opt ? 1 : 0)];
  return Buffer.from([...header, ...wireName(name), ...u16(type), ...u16(1), ...(o.opt ?? [])]);
}

/** OPT: root owner, type 41, class = UDP size, TTL = ext-rcode/version/flags, no options. */
const opt = (version = 0, size = 1232) => [0, ...u16(41), ...u16(size), 0, version, 0x80, 0, 0, 0];

describe('parseQuery', () => {
  it('reads the ID, RD bit and question, keeping the asked case', () => {
    const q = parseQuery(query('Planner.PROD', TYPE.A))!;
    expect(q.error).toBeNull();
    expect(q.id).toBe(0x1234);
    expect(q.rd).toBe(true);
    expect(q.opcode).toBe(0);
    expect(q.question!.name.map((l) => Buffer.from(l).toString('latin1'))).toEqual(['Planner', 'PROD']);
    expect(q.question!.type).toBe(TYPE.A);
    expect(q.question!.class).toBe(1);
    expect(q.edns).toBeNull();
  });

  it('reads an EDNS0 OPT record', () => {
    const q = parseQuery(query('planner.prod', TYPE.AAAA, { opt: opt(0, 4096), flags: 0 }))!;
    expect(q.error).toBeNull();
    expect(q.rd).toBe(false);
    expect(q.edns).toEqual({ version: 0, udpSize: 4096 });
    expect(parseQuery(query('planner.prod', TYPE.A, { opt: opt(1) }))!.edns!.version).toBe(1);
  });

  it('follows a compression pointer that points backwards', () => {
    // Question planner.prod, then an additional A record whose owner points at it (0xc00c).
    const base = query('planner.prod', TYPE.A);
    base[11] = 1; // arcount
    const rr = [0xc0, 12, ...u16(TYPE.A), ...u16(1), 0, 0, 0, 5, ...u16(4), 1, 2, 3, 4];
    const q = parseQuery(Buffer.concat([base, Buffer.from(rr)]))!;
    expect(q.error).toBeNull();
  });

  it('drops what cannot be answered: a short header or a response', () => {
    expect(parseQuery(Buffer.alloc(0))).toBeNull();
    expect(parseQuery(Buffer.alloc(11))).toBeNull();
    expect(parseQuery(query('planner.prod', TYPE.A, { flags: 0x8100 }))).toBeNull();
  });

  it('flags malformed bodies while keeping the header for FORMERR', () => {
    const cases: Record<string, Buffer> = {
      'no question': query('planner.prod', TYPE.A, { qdcount: 0 }).subarray(0, 12),
      'two questions': query('planner.prod', TYPE.A, { qdcount: 2 }),
      'truncated question': query('planner.prod', TYPE.A).subarray(0, 20),
      'no type/class': query('planner.prod', TYPE.A).subarray(0, 12 + 14),
      'self pointer': Buffer.from([...u16(7), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]),
      'two-step loop': Buffer.from([...u16(7), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x61, 0xc0, 14, 0xc0, 12, 0, 1, 0, 1]),
      'forward pointer': Buffer.from([...u16(7), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 16, 0, 1, 0, 1, 1, 0x61, 0]),
      'pointer cut short': Buffer.from([...u16(7), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0]),
      'label past the end': Buffer.from([...u16(7), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 0x61, 0x62]),
      'label type 0x40': Buffer.from([...u16(7), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x41, 0x61, 0, 0, 1, 0, 1]),
      'name over 255': query(Array(5).fill('a'.repeat(63)).join('.'), TYPE.A),
      'trailing bytes': Buffer.concat([query('planner.prod', TYPE.A), Buffer.from([0])]),
      'two OPTs': (() => {
        const b = query('planner.prod', TYPE.A, { opt: [...opt(), ...opt()] });
        b[11] = 2;
        return b;
      })(),
      'OPT not at root': query('planner.prod', TYPE.A, { opt: [1, 0x61, ...opt()] }),
      'missing OPT': query('planner.prod', TYPE.A, { opt: [] }).fill(1, 11, 12),
    };
    for (const [what, packet] of Object.entries(cases)) {
      const q = parseQuery(packet);
      expect(q, what).not.toBeNull();
      expect(q!.error, what).toBeTruthy();
      expect(q!.edns, what).toBeNull();
    }
    expect(parseQuery(cases['two questions'])!.id).toBe(0x1234);
  });

  it('does not parse the body of other opcodes', () => {
    const q = parseQuery(query('planner.prod', TYPE.A, { flags: 2 << 11 }))!; // STATUS
    expect(q.opcode).toBe(2);
    expect(q.error).toBeNull();
    expect(q.question).toBeNull();
  });

  it('never throws on random or mutated input', () => {
    let seed = 12345;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) & 0xff;
    const valid = query('planner.prod', TYPE.A, { opt: opt() });
    for (let i = 0; i < 20000; i++) {
      const b = i % 2 ? Buffer.from(valid) : Buffer.alloc(rand() % 80);
      for (let j = 0; j < b.length; j++) if (i % 2 === 0 || rand() < 20) b[j] = rand();
      b[2] &= 0x7f; // keep QR clear so the body is parsed
      expect(() => parseQuery(b.subarray(0, i % 2 ? rand() % (b.length + 1) : b.length))).not.toThrow();
    }
  });
});

describe('buildResponse', () => {
  it('encodes an A answer whose owner points at the question (golden bytes)', () => {
    const q = parseQuery(query('planner.prod', TYPE.A))!;
    const out = buildResponse({
      id: q.id, opcode: 0, rd: q.rd, aa: true, rcode: RCODE.NOERROR, question: q.question,
      answers: [{ name: q.question!.name, type: TYPE.A, ttl: 5, data: Uint8Array.from([100, 64, 0, 7]) }],
    });
    expect(out.toString('hex')).toBe(
      '1234' + '8500' + '0001' + '0001' + '0000' + '0000' + // QR AA RD, 1 question, 1 answer
      '07706c616e6e657204' + '70726f64' + '00' + '0001' + '0001' + // planner.prod A IN
      'c00c' + '0001' + '0001' + '00000005' + '0004' + '64400007', // ptr, A, IN, ttl 5, 100.64.0.7
    );
  });

  it('compresses an SOA against the zone suffix of the question, case-insensitively', () => {
    const q = parseQuery(query('ghost.PROD', TYPE.A))!;
    const zone = nameFromString('prod');
    const out = buildResponse({
      id: 1, opcode: 0, rd: false, aa: true, rcode: RCODE.NXDOMAIN, question: q.question,
      authority: [{
        name: zone, type: TYPE.SOA, ttl: 5,
        data: { mname: zone, rname: nameFromString('hostmaster.prod'), serial: 1, refresh: 2, retry: 3, expire: 4, minimum: 5 },
      }],
    });
    const qEnd = 12 + 12 + 4; // header, \x05ghost\x04PROD\x00, type, class
    expect(out.readUInt16BE(2) & 0xf).toBe(RCODE.NXDOMAIN);
    expect(out.readUInt16BE(8)).toBe(1); // nscount
    expect(out.subarray(qEnd, qEnd + 2).toString('hex')).toBe('c012'); // owner -> 'PROD' at offset 18
    expect(out.readUInt16BE(qEnd + 2)).toBe(TYPE.SOA);
    const rdata = out.subarray(qEnd + 12);
    expect(out.readUInt16BE(qEnd + 10)).toBe(rdata.length);
    expect(rdata.toString('hex')).toBe('c012' + '0a' + Buffer.from('hostmaster').toString('hex') + 'c012' +
      '00000001' + '00000002' + '00000003' + '00000004' + '00000005');
  });

  it('puts the high bits of an extended rcode in an OPT record', () => {
    const out = buildResponse({ id: 9, opcode: 0, rd: false, aa: false, rcode: RCODE.BADVERS });
    expect(out.readUInt16BE(2) & 0xf).toBe(0);
    expect(out.readUInt16BE(10)).toBe(1); // arcount
    expect(out.subarray(12).toString('hex')).toBe('00' + '0029' + '04d0' + '01000000' + '0000');
  });
});

describe('names', () => {
  it('parses dotted names, compares case-insensitively (ASCII only)', () => {
    expect(nameFromString('planner.prod.').map(labelText)).toEqual(['planner', 'prod']);
    expect(nameFromString('')).toEqual([]);
    expect(() => nameFromString('a..b')).toThrow();
    expect(() => nameFromString('x'.repeat(64))).toThrow();
    expect(endsWithName(nameFromString('Planner.PROD'), nameFromString('prod'))).toBe(true);
    expect(endsWithName(nameFromString('planner.prod'), nameFromString('a.planner.prod'))).toBe(false);
    expect(endsWithName(nameFromString('planner.production'), nameFromString('prod'))).toBe(false);
    expect(labelText(Buffer.from([0xc9, 0x41]))).toBe('\u00c9a');
  });
});
