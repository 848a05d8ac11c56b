import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_ENTRY_BYTES, canonicalJson, clip, encodeEntry, parseEntry, type AuditEntry, type JsonValue } from '../../src/audit/entry.js';
import { errorCodeOf } from '../fixtures/error-code.js';

const entry: AuditEntry = {
  seq: 42,
  time: '2026-12-01T10:20:30.456Z',
  agent: 'agent-a1',
  type: 'trust.pinned',
  subject: 'peer-b2',
  details: { name: 'worker', rttUs: 1234, ok: true, none: null, tags: ['a', 'b'], nested: { z: 1, a: [2, { y: 'x' }] } },
};
const line = encodeEntry(entry).toString('utf8');
const refused = (input: string | Uint8Array) => errorCodeOf(() => parseEntry(input));
/** The line with its first `from` replaced by `to` (the test's edit must apply). */
const edited = (from: string, to: string) => {
  expect(line).toContain(from);
  return line.replace(from, to);
};

describe('audit entry: canonical form', () => {
  it('writes sorted keys at every depth, no whitespace, and reads back the same entry and bytes', () => {
    expect(line).toBe(
      '{"agent":"agent-a1","details":{"name":"worker","nested":{"a":[2,{"y":"x"}],"z":1},"none":null,"ok":true,"rttUs":1234,"tags":["a","b"]},' +
        '"seq":42,"subject":"peer-b2","time":"2026-12-01T10:20:30.456Z","type":"trust.pinned"}',
    );
    expect(parseEntry(line)).toEqual(entry);
    expect(parseEntry(Buffer.from(line))).toEqual(entry);
    expect(encodeEntry(parseEntry(line)).toString('utf8')).toBe(line);
  });

  it('has no newline even when a field holds one (one entry per line on disk)', () => {
    const bytes = encodeEntry({ ...entry, subject: 'a\nb', details: { msg: 'line1\r\nline2\u2028' } });
    expect(bytes.includes(0x0a)).toBe(false);
    expect(parseEntry(bytes).subject).toBe('a\nb');
  });

  it('canonicalJson sorts by UTF-16 code units and drops undefined members', () => {
    expect(canonicalJson({ b: 1, a: 2, B: 3, é: 4, '\u{1f600}': 5, '\uffff': 6, c: undefined })).toBe('{"B":3,"a":2,"b":1,"é":4,"\u{1f600}":5,"\uffff":6}');
  });

  it('the writer refuses floats, unsafe integers, deep nesting and oversize entries as our bug', () => {
    expect(errorCodeOf(() => encodeEntry({ ...entry, details: { rtt: 1.5 } }))).toBe('INTERNAL');
    expect(errorCodeOf(() => encodeEntry({ ...entry, details: { big: 2 ** 53 } }))).toBe('INTERNAL');
    expect(errorCodeOf(() => encodeEntry({ ...entry, details: { nan: Number.NaN } }))).toBe('INTERNAL');
    let deep: JsonValue = 1;
    for (let i = 0; i < 10; i++) deep = [deep];
    expect(errorCodeOf(() => encodeEntry({ ...entry, details: { deep } }))).toBe('INTERNAL');
    expect(errorCodeOf(() => encodeEntry({ ...entry, details: { blob: 'x'.repeat(MAX_ENTRY_BYTES) } }))).toBe('INTERNAL');
    expect(errorCodeOf(() => encodeEntry({ ...entry, type: 'Not A Type' }))).toBe('INTERNAL');
  });

  it('clip keeps short text and cuts long text to a bounded size', () => {
    expect(clip('short')).toBe('short');
    expect(clip('x'.repeat(1000)).length).toBe(201);
  });
});

describe('audit entry: parseEntry refuses what is not canonical', () => {
  const cases: [string, string | Uint8Array][] = [
    ['keys out of order', line.replace('"agent":"agent-a1",', '').replace('"seq":42,', '"seq":42,"agent":"agent-a1",')],
    ['nested keys out of order', edited('"nested":{"a":[2,{"y":"x"}],"z":1}', '"nested":{"z":1,"a":[2,{"y":"x"}]}')],
    ['a space after a colon', edited('"seq":42', '"seq": 42')],
    ['a trailing newline', `${line}\n`],
    ['leading whitespace', ` ${line}`],
    ['a float', edited('"rttUs":1234', '"rttUs":1234.5')],
    ['an integer written as a float', edited('"rttUs":1234', '"rttUs":1234.0')],
    ['an exponent', edited('"rttUs":1234', '"rttUs":1.234e3')],
    ['negative zero', edited('"rttUs":1234', '"rttUs":-0')],
    ['an unsafe integer', edited('"rttUs":1234', '"rttUs":9007199254740993')],
    ['a float seq', edited('"seq":42', '"seq":42.5')],
    ['a negative seq', edited('"seq":42', '"seq":-1')],
    ['a seq as a string', edited('"seq":42', '"seq":"42"')],
    ['an escape JSON.stringify does not write', edited('"peer-b2"', '"peer\\u002db2"')],
    ['an escaped slash', edited('"peer-b2"', '"peer\\/b2"')],
    ['an extra field', edited('"type":"trust.pinned"', '"type":"trust.pinned","zz":1')],
    ['a missing field', line.replace(',"subject":"peer-b2"', '')],
    ['a duplicated field', edited('"seq":42', '"seq":41,"seq":42')],
    ['details an array', edited(line.slice(line.indexOf('"details":'), line.indexOf(',"seq"')), '"details":[]')],
    ['details null', edited(line.slice(line.indexOf('"details":'), line.indexOf(',"seq"')), '"details":null')],
    ['a type in capitals', edited('trust.pinned', 'Trust.Pinned')],
    ['a type of one word', edited('trust.pinned', 'trust')],
    ['a type with a space', edited('trust.pinned', 'trust. pinned')],
    ['an empty agent', edited('"agent-a1"', '""')],
    ['a time without milliseconds', edited('10:20:30.456Z', '10:20:30Z')],
    ['a time with an offset', edited('10:20:30.456Z', '10:20:30.456+01:00')],
    ['a time that is no date', edited('2026-12-01', '2026-13-01')],
    ['a day past the end of its month', edited('2026-12-01', '2026-02-30')],
    ['hour 24', edited('10:20:30', '24:00:00')],
    ['a time as a number', edited('"2026-12-01T10:20:30.456Z"', '1796206830456')],
    ['an oversize subject', edited('"peer-b2"', JSON.stringify('s'.repeat(257)))],
    ['not JSON', line.slice(0, -1)],
    ['an array', `[${line}]`],
    ['a number', '42'],
    ['the empty string', ''],
    ['more than MAX_ENTRY_BYTES', edited('"worker"', JSON.stringify('w'.repeat(MAX_ENTRY_BYTES)))],
  ];
  for (const [what, input] of cases) {
    it(`refuses ${what}`, () => {
      expect(refused(input)).toBe('AUDIT_ENTRY_MALFORMED');
    });
  }

  it('refuses bytes that are not UTF-8 (two different lines must not read as one entry)', () => {
    const bytes = Buffer.from(edited('"peer-b2"', '"peer?b2"'));
    bytes[bytes.indexOf('?')] = 0xff;
    // Decoded leniently, 0xff reads as U+FFFD: the same entry as the line holding its 3-byte UTF-8.
    expect(refused(Buffer.from(edited('"peer-b2"', '"peer\ufffdb2"')))).toBe('no error');
    expect(refused(bytes)).toBe('AUDIT_ENTRY_MALFORMED');
  });

  it('refuses a 4 MiB input', () => {
    const huge = `{"agent":"${'a'.repeat(4 * 1024 * 1024)}"}`;
    const started = process.hrtime.bigint();
    expect(refused(huge)).toBe('AUDIT_ENTRY_MALFORMED');
    expect(refused(Buffer.from(huge))).toBe('AUDIT_ENTRY_MALFORMED');
    console.log(`entry: a 4 MiB input refused in ${Number(process.hrtime.bigint() - started) / 1e6} ms`);
  });

  it('never throws anything but AUDIT_ENTRY_MALFORMED on mutated lines', () => {
    const chars = fc.constantFrom(' ', '"', '\\', '{', '}', ',', ':', '0', '.', 'e', '-', 'é', '\n', '\u0000');
    fc.assert(
      fc.property(fc.nat({ max: line.length }), fc.nat({ max: 3 }), fc.array(chars, { maxLength: 3 }), (at, del, ins) => {
        const mutated = line.slice(0, at) + ins.join('') + line.slice(at + del);
        const code = refused(mutated);
        if (mutated !== line) expect(code === 'AUDIT_ENTRY_MALFORMED' || encodeEntry(parseEntry(mutated)).toString() === mutated).toBe(true);
      }),
      { numRuns: 3000 },
    );
  });
});

describe('audit entry: property', () => {
  // Strings of any UTF-16 code units: control characters, lone surrogates, U+2028 all must survive.
  const text = (maxLength: number) => fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength });
  const { json } = fc.letrec<{ json: JsonValue }>((tie) => ({
    json: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.constant(null),
      fc.boolean(),
      fc.maxSafeInteger(),
      text(20),
      fc.array(tie('json'), { maxLength: 4 }),
      fc.dictionary(text(8), tie('json'), { maxKeys: 4 }),
    ),
  }));
  const word = fc.stringMatching(/^[a-z][a-z0-9-]{0,8}$/);
  const arbitraryEntry = fc.record({
    seq: fc.maxSafeInteger().map(Math.abs),
    time: fc.date({ min: new Date('1970-01-01T00:00:00.000Z'), max: new Date('9999-12-31T23:59:59.999Z'), noInvalidDate: true }).map((d) => d.toISOString()),
    agent: text(128).filter((s) => s.length > 0),
    type: fc.array(word, { minLength: 2, maxLength: 4 }).map((w) => w.join('.')).filter((t) => t.length <= 64),
    subject: text(80),
    details: fc.dictionary(text(10), json, { maxKeys: 5 }),
  });

  it('encode then parse is the identity, and the bytes are stable', () => {
    let checked = 0;
    fc.assert(
      fc.property(arbitraryEntry, (e) => {
        let bytes: Buffer;
        try {
          bytes = encodeEntry(e);
        } catch {
          return; // deeper than MAX_DEPTH or over MAX_ENTRY_BYTES: the writer refuses it (tested above)
        }
        checked++;
        expect(bytes.includes(0x0a)).toBe(false);
        const back = parseEntry(bytes);
        expect(back).toEqual(e);
        expect(encodeEntry(back).equals(bytes)).toBe(true);
        expect(parseEntry(bytes.toString('utf8'))).toEqual(e);
      }),
      { numRuns: 2000 },
    );
    console.log(`entry: ${checked} generated entries round-tripped`);
    expect(checked).toBeGreaterThan(1500);
  });
});
