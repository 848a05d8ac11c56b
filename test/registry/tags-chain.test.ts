// Property tests (fast-check) for the parsers and checks the registry adds: token tags, tags read
// back from the database, and "a key chain may only grow".
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { extendsChain } from '../../src/registry/key-chain.js';
import { MAX_TAGS, TAG_PATTERN, parseStoredTags, validateTags } from '../../src/registry/tags.js';

const tag = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
const statement = fc.record({ seq: fc.nat(63), key: fc.base64String({ minLength: 4, maxLength: 8 }), sigs: fc.record({ self: fc.string() }) });

describe('registry tags', () => {
  it('validateTags keeps well-formed tags (deduplicated, in order) and refuses anything else', () => {
    fc.assert(fc.property(fc.array(tag, { maxLength: MAX_TAGS }), (tags) => {
      expect(validateTags(tags)).toEqual([...new Set(tags)]);
    }));
    fc.assert(fc.property(fc.array(tag, { maxLength: 4 }), fc.string(), (tags, odd) => {
      fc.pre(!TAG_PATTERN.test(odd));
      expect(() => validateTags([...tags, odd])).toThrow(expect.objectContaining({ code: 'BAD_TAG' }));
    }));
    expect(() => validateTags(Array.from({ length: MAX_TAGS + 1 }, (_, i) => `t${i}`))).toThrow(expect.objectContaining({ code: 'BAD_TAG' }));
  });

  it('parseStoredTags never throws and returns only well-formed tags, at most MAX_TAGS', () => {
    fc.assert(fc.property(fc.oneof(fc.string(), fc.json()), (text) => {
      const tags = parseStoredTags(text);
      expect(tags.length).toBeLessThanOrEqual(MAX_TAGS);
      for (const t of tags) expect(TAG_PATTERN.test(t)).toBe(true);
    }));
    fc.assert(fc.property(fc.array(tag, { maxLength: MAX_TAGS }), (tags) => {
      expect(parseStoredTags(JSON.stringify(tags))).toEqual(tags);
    }));
  });
});

describe('key chains at the registry', () => {
  it('a chain extends the held one exactly when it starts with every held statement', () => {
    fc.assert(fc.property(fc.array(statement, { maxLength: 6 }), fc.array(statement, { maxLength: 6 }), (held, more) => {
      expect(extendsChain(held, [...held, ...more])).toBe(true);
      // Key order does not matter (statements are compared as data), a copy is as good as the original.
      expect(extendsChain(held, structuredClone(held).map((s) => ({ sigs: s.sigs, key: s.key, seq: s.seq })))).toBe(true);
    }));
    fc.assert(fc.property(fc.array(statement, { minLength: 1, maxLength: 6 }), fc.nat(), fc.string(), (held, at, junk) => {
      const i = at % held.length;
      fc.pre(junk !== held[i].sigs.self);
      const forked = held.map((s, j) => (j === i ? { ...s, sigs: { self: junk } } : s));
      expect(extendsChain(held, forked)).toBe(false); // changes a held statement: a fork
      expect(extendsChain(held, held.slice(0, -1))).toBe(false); // shorter: a replay of an older chain
    }));
  });
});
