import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compilePolicy, type AgentFacts } from '../../src/policy/compile.js';
import { PolicyFilter } from '../../src/policy/filter.js';
import { parsePolicy } from '../../src/policy/parse.js';
import type { Peer } from '../../src/wireguard/peer.js';
import { icmpError, packet, type PacketSpec } from './packets.js';

const facts = (name: string, n: number): AgentFacts => ({
  id: name, name, tags: [], capabilities: [], ipv4: `100.64.0.${n}`, ipv6: `fd00:a::${n}`, wgPublicKey: Buffer.alloc(32, n).toString('base64'),
});
const peer = { publicKey: Buffer.alloc(32, 2) } as unknown as Peer;
const policy = parsePolicy('{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:1-1000", "udp:53", "icmp"]}]}');

/** Valid packets of every shape the filter reads, to be mutated. */
const spec: fc.Arbitrary<PacketSpec> = fc.record({
  v6: fc.boolean(),
  proto: fc.constantFrom('tcp', 'udp', 'icmp'),
  sport: fc.integer({ min: 0, max: 65535 }),
  dport: fc.integer({ min: 0, max: 65535 }),
  flags: fc.integer({ min: 0, max: 255 }),
  type: fc.integer({ min: 0, max: 255 }),
  frag: fc.option(fc.record({ id: fc.nat(0xffff), offset: fc.nat(0x1fff), more: fc.boolean() }), { nil: undefined }),
}).map((r) => ({
  src: r.v6 ? 'fd00:a::2' : '100.64.0.2', dst: r.v6 ? 'fd00:a::1' : '100.64.0.1', proto: r.proto as PacketSpec['proto'],
  sport: r.sport, dport: r.dport, flags: r.flags, type: r.type, fragment: r.frag,
}));

const mutated = fc.tuple(spec, fc.boolean(), fc.array(fc.tuple(fc.nat(200), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }), fc.nat(200))
  .map(([s, wrap, flips, cut]) => {
    let p = packet(s);
    if (wrap) p = icmpError(s.dst, s.src, p);
    const out = Buffer.from(p);
    for (const [at, byte] of flips) if (out.length) out[at % out.length] = byte;
    return out.subarray(0, Math.max(0, out.length - (cut % 8 === 0 ? cut % 40 : 0)));
  });

describe('the filter never throws on hostile packets (fast-check)', () => {
  it('random bytes and mutated packets: inbound, outbound and rejection only answer true/false/a length', () => {
    const f = new PolicyFilter({ flowCapacity: 64 });
    f.setPolicy(compilePolicy(policy, facts('alpha', 1), [facts('beta', 2)]));
    const input = fc.oneof(mutated, fc.uint8Array({ maxLength: 120 }).map((u) => Buffer.from(u)));
    let decided = 0;
    fc.assert(fc.property(input, fc.nat(10_000_000), (buf, now) => {
      // The Device hands the filter a slot in a larger buffer: put the packet at an offset in one.
      const slab = Buffer.alloc(buf.length + 64, 0xee);
      buf.copy(slab, 32);
      expect(typeof f.inbound(peer, slab, 32, buf.length, now)).toBe('boolean');
      if (!f.outbound(peer, slab, 32, buf.length, now)) {
        const n = f.rejection(slab, 32, buf.length);
        expect(n).toBeGreaterThanOrEqual(0);
        expect(n).toBeLessThanOrEqual(1280);
      }
      decided++;
    }), { numRuns: 20_000 });
    console.log(`hostile packets decided without an exception: ${decided}; flow table ${f.flowCount}/64`);
    expect(f.flowCount).toBeLessThanOrEqual(64);
  });
});
