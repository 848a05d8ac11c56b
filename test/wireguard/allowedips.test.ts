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
});
