import { describe, it, expect } from 'vitest';
import { AllowedIps } from '../../src/wireguard/allowedips.js';
import { parsePrefix, parseAddress, formatPrefix } from '../../src/ip/prefix.js';

const p = (s: string) => parsePrefix(s)!;
const a = (s: string) => parseAddress(s)!;

describe('AllowedIps', () => {
  it('finds the longest matching prefix for IPv4 and IPv6', () => {
    const t = new AllowedIps<string>();
    t.insert(p('100.64.0.0/10'), 'wide');
    t.insert(p('100.64.1.0/24'), 'subnet');
    t.insert(p('100.64.1.7/32'), 'host');
    t.insert(p('0.0.0.0/0'), 'default');
    t.insert(p('fd00:1::/48'), 'v6net');
    t.insert(p('fd00:1::5/128'), 'v6host');
    expect(t.lookup(a('100.64.1.7'))).toBe('host');
    expect(t.lookup(a('100.64.1.8'))).toBe('subnet');
    expect(t.lookup(a('100.65.0.1'))).toBe('wide');
    expect(t.lookup(a('192.0.2.1'))).toBe('default');
    expect(t.lookup(a('fd00:1::5'))).toBe('v6host');
    expect(t.lookup(a('fd00:1:0:ffff::1'))).toBe('v6net');
    expect(t.lookup(a('fd00:2::1'))).toBeUndefined();
  });

  it('moves a prefix to the newest owner and removes all prefixes of a value', () => {
    const t = new AllowedIps<string>();
    t.insert(p('10.0.0.0/8'), 'a');
    t.insert(p('100.64.0.1/32'), 'a');
    t.insert(p('10.0.0.0/8'), 'b');
    expect(t.lookup(a('10.1.2.3'))).toBe('b');
    expect(t.prefixesOf('a').map(formatPrefix)).toEqual(['100.64.0.1/32']);
    t.removeValue('b');
    expect(t.lookup(a('10.1.2.3'))).toBeUndefined();
    expect(t.lookup(a('100.64.0.1'))).toBe('a');
  });

  it('matches prefixes whose length is not a multiple of 8 and stores host bits cleared', () => {
    const t = new AllowedIps<string>();
    t.insert(p('100.64.0.77/26'), 'x');
    t.insert(p('fd00::1:2:3/37'), 'y');
    expect(t.lookup(a('100.64.0.127'))).toBe('x');
    expect(t.lookup(a('100.64.0.128'))).toBeUndefined();
    expect(t.prefixesOf('x').map(formatPrefix)).toEqual(['100.64.0.64/26']);
    expect(t.lookup(a('fd00:0:7ff::9'))).toBe('y');
    expect(t.lookup(a('fd00:0:800::'))).toBeUndefined();
  });

  it('removes one prefix of its own holder only, and a peer with 65,536 prefixes is built and trimmed in linear time', () => {
    const t = new AllowedIps<string>();
    t.insert(p('10.0.0.0/8'), 'a');
    t.insert(p('10.1.0.0/16'), 'a');
    t.remove(p('10.1.0.0/16'), 'b'); // b does not hold it: nothing changes
    expect(t.prefixesOf('a').map(formatPrefix)).toEqual(['10.0.0.0/8', '10.1.0.0/16']);
    t.remove(p('10.1.2.3/16'), 'a'); // host bits are masked, as on insert
    expect(t.prefixesOf('a').map(formatPrefix)).toEqual(['10.0.0.0/8']);
    expect(t.lookup(a('10.1.2.3'))).toBe('a');
    // What a UAPI set of 65,536 allowed_ip lines does to one peer (each insert used to copy the peer's list).
    const start = performance.now();
    for (let i = 0; i < 65_536; i++) t.insert(p(`100.${64 + (i >> 14)}.${(i >> 6) & 0xff}.${(i & 0x3f) * 4}/30`), 'big');
    for (let i = 0; i < 65_536; i += 2) t.remove(p(`100.${64 + (i >> 14)}.${(i >> 6) & 0xff}.${(i & 0x3f) * 4}/30`), 'big');
    console.log(`65,536 inserts and 32,768 removals for one peer: ${(performance.now() - start).toFixed(0)} ms`);
    expect(t.prefixesOf('big')).toHaveLength(32_768);
    expect(t.lookup(a('100.64.0.5'))).toBe('big');
    expect(t.lookup(a('100.64.0.1'))).toBeUndefined();
  });
});
