/** The Device's filter hook: decrypted packets after the source check, TUN packets before sealing. */
import { describe, expect, it } from 'vitest';
import { encodeKey } from '../../src/crypto/keys.js';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { compilePolicy, type AgentFacts } from '../../src/policy/compile.js';
import { PolicyFilter } from '../../src/policy/filter.js';
import { parsePolicy } from '../../src/policy/parse.js';
import { Device } from '../../src/wireguard/device.js';
import { makeEndpoint } from '../../src/net/endpoint.js';
import { deliver, memoryBind, memoryTun, sendFromTun, udpEndpoint, type Side } from '../wireguard/memory-link.js';
import { packet, SYN } from './packets.js';

function facts(name: string, n: number, key: Uint8Array): AgentFacts {
  return { id: name, name, tags: [], capabilities: [], ipv4: `100.64.0.${n}`, ipv6: '', wgPublicKey: encodeKey(publicKeyOf(key)) };
}

/** Like memory-link's makeSide, with a filter in the Device. */
function sideWithFilter(key: Uint8Array, n: number, filter: PolicyFilter, other: () => Side): Side {
  const side: Side = { endpoint: makeEndpoint(Uint8Array.from([192, 0, 2, n]), 51820), inbox: [], tunOut: [], device: null as unknown as Device };
  side.device = new Device({
    privateKey: key, mtu: 1420, batchSize: 64, filter,
    bind: memoryBind(() => other().inbox),
    tun: memoryTun(() => side.tunOut),
  });
  return side;
}

describe('Device with a PolicyFilter', () => {
  it('drops what the receiver does not grant, answers refused sends with ICMP on the TUN, and counts both per peer', () => {
    const kA = generatePrivateKey();
    const kB = generatePrivateKey();
    const policy = parsePolicy('{"grants": [{"src": ["name:alpha"], "dst": ["name:beta"], "ip": ["tcp:80"]}]}');
    const filters = { a: new PolicyFilter(), b: new PolicyFilter() };
    filters.a.setPolicy(compilePolicy(policy, facts('alpha', 1, kA), [facts('beta', 2, kB)]));
    filters.b.setPolicy(compilePolicy(policy, facts('beta', 2, kB), [facts('alpha', 1, kA)]));
    const a = sideWithFilter(kA, 1, filters.a, () => b);
    const b = sideWithFilter(kB, 2, filters.b, () => a);
    a.device.addPeer({ publicKey: publicKeyOf(kB), allowedIps: [parsePrefix('100.64.0.2/32')!], endpoint: udpEndpoint(b) });
    b.device.addPeer({ publicKey: publicKeyOf(kA), allowedIps: [parsePrefix('100.64.0.1/32')!], endpoint: udpEndpoint(a) });
    const pump = () => {
      for (let i = 0; i < 10; i++) {
        deliver(b, a);
        deliver(a, b);
      }
    };

    sendFromTun(a, [packet({ src: '100.64.0.1', dst: '100.64.0.2', proto: 'tcp', sport: 40000, dport: 80, flags: SYN })]);
    pump();
    expect(b.tunOut).toHaveLength(1); // granted: through

    // alpha's filter refuses tcp:81 before sealing: nothing is sent, an ICMP 3/13 comes back on alpha's TUN.
    const sentBefore = b.inbox.length;
    sendFromTun(a, [packet({ src: '100.64.0.1', dst: '100.64.0.2', proto: 'tcp', sport: 40001, dport: 81, flags: SYN })]);
    expect(b.inbox.length).toBe(sentBefore);
    const answer = a.tunOut.at(-1)!;
    expect([answer[9], answer[20], answer[21]]).toEqual([1, 3, 13]);
    expect(a.device.getPeer(publicKeyOf(kB))!.dropped.policyRejected).toBe(1);

    // A sender without a filter of its own (say, a modified client) reaches beta's filter, which drops it.
    filters.a.setPolicy(null);
    sendFromTun(a, [packet({ src: '100.64.0.1', dst: '100.64.0.2', proto: 'tcp', sport: 40002, dport: 81, flags: SYN })]);
    pump();
    expect(b.tunOut).toHaveLength(1);
    expect(b.device.getPeer(publicKeyOf(kA))!.dropped.policyDenied).toBe(1);
    expect(filters.b.deniesOf(b.device.getPeer(publicKeyOf(kA))!)!.noGrant).toBe(1);
  });
});
