import { isIPv4 } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatAddress, parseAddress } from '../../src/ip/prefix.js';

describe('parseAddress (IPv4)', () => {
  it('reads every dotted quad as its four bytes, and formats back to the same text', () => {
    fc.assert(fc.property(fc.uint8Array({ minLength: 4, maxLength: 4 }), (bytes) => {
      const text = Array.from(bytes).join('.');
      expect(parseAddress(text)).toEqual(bytes);
      expect(formatAddress(parseAddress(text)!)).toBe(text);
    }), { numRuns: 2000 });
    for (const text of ['0.0.0.0', '255.255.255.255', '100.64.0.1', '10.200.3.99']) {
      expect(Array.from(parseAddress(text)!)).toEqual(text.split('.').map(Number));
    }
  });

  it('refuses what is not a dotted quad: leading zeros, parts over 255, other characters, whitespace', () => {
    for (const text of ['01.2.3.4', '256.1.1.1', '1.2.3', '1.2.3.4.5', ' 1.2.3.4', '1.2.3.4\n', '1.2.3.a', '1..2.3', '']) {
      expect(parseAddress(text)).toBeNull();
    }
  });

  it('agrees with split-and-Number on any text of digits and dots', () => {
    fc.assert(fc.property(fc.string({ unit: fc.constantFrom('0', '1', '2', '5', '9', '.'), maxLength: 16 }), (text) => {
      const expected = isIPv4(text) ? new Uint8Array(text.split('.').map(Number)) : null;
      expect(parseAddress(text)).toEqual(expected);
    }), { numRuns: 5000 });
  });
});
