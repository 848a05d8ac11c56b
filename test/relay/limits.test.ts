import { describe, expect, it } from 'vitest';
import { parseAddress } from '../../src/ip/prefix.js';
import { SourceBuckets } from '../../src/util/token-bucket.js';
import { makeEndpoint, sourceKey } from '../../src/net/endpoint.js';

const key = (addr: string, port = 1) => sourceKey(makeEndpoint(parseAddress(addr)!, port));

describe('relay budgets per source', () => {
  it('keys IPv4 by address and IPv6 by /64, whatever the port', () => {
    expect(key('192.0.2.1', 1)).toBe(key('192.0.2.1', 2));
    expect(key('192.0.2.1')).not.toBe(key('192.0.2.2'));
    expect(key('2001:db8:1:2::1')).toBe(key('2001:db8:1:2:ffff::9'));
    expect(key('2001:db8:1:2::1')).not.toBe(key('2001:db8:1:3::1'));
    expect(key('::ffff:192.0.2.1')).toBe(key('192.0.2.1'));
  });

  it('gives each source its own bucket, and forgets the oldest past the cap (which then starts full again)', () => {
    const b = new SourceBuckets(1, 2, 3);
    const t = 1000;
    expect([b.take('a', t), b.take('a', t), b.take('a', t)]).toEqual([true, true, false]);
    expect(b.take('b', t)).toBe(true);
    b.take('c', t);
    b.take('d', t); // evicts 'a'
    expect(b.size).toBe(3);
    expect(b.take('a', t)).toBe(true);
  });
});
