import { describe, expect, it } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../../src/crypto/x25519.js';
import { parsePrefix } from '../../src/ip/prefix.js';
import { Device } from '../../src/wireguard/device.js';
import { ENDPOINT_SIZE, makeEndpoint } from '../../src/net/endpoint.js';
import type { Bind } from '../../src/wireguard/bind.js';
import { UdpEndpoint } from '../../src/wireguard/endpoint.js';
import { memoryTun } from './memory-link.js';
import { ipv4Packet } from './memory-link.js';

// Batched seal and open seen from the Device: one batch of datagrams from several peers, with
// bad ones among them, and batches larger than the device's batch size.

interface Datagram {
  msg: Buffer;
  from: Buffer;
}

interface Node {
  device: Device;
  endpoint: Buffer;
  overlay: number[];
  inbox: Datagram[];
  tunOut: Buffer[];
}

/** Nodes on a memory "network" that routes each datagram by its destination endpoint. */
function network(count: number, batchSize: number): Node[] {
  const nodes: Node[] = [];
  const byEndpoint = new Map<string, Node>();
  for (let i = 0; i < count; i++) {
    const endpoint = makeEndpoint(Uint8Array.from([192, 0, 2, i + 1]), 51820);
    const node = { endpoint, overlay: [100, 64, 0, i + 1], inbox: [], tunOut: [] } as unknown as Node;
    const bind: Bind = {
      send(slab, offsets, lens, endpoints, n) {
        for (let k = 0; k < n; k++) {
          const to = byEndpoint.get(endpoints[k].direct!.toString('latin1', 0, 18));
          to?.inbox.push({ msg: Buffer.from(slab.subarray(offsets[k], offsets[k] + lens[k])), from: endpoint });
        }
        return n;
      },
      endpointAt: () => null,
    };
    node.device = new Device({ privateKey: generatePrivateKey(), mtu: 1420, bind, tun: memoryTun(() => node.tunOut), batchSize });
    byEndpoint.set(endpoint.toString('latin1', 0, 18), node);
    nodes.push(node);
  }
  for (const x of nodes) {
    for (const y of nodes) {
      if (x === y) continue;
      x.device.addPeer({ publicKey: y.device.local.publicKey, endpoint: new UdpEndpoint(y.endpoint), allowedIps: [parsePrefix(`${y.overlay.join('.')}/32`)!] });
    }
  }
  return nodes;
}

/** Hands a node its inbox as UDP batches of up to `perBatch` datagrams (the reader's rounds). */
function deliver(node: Node, perBatch = 1024): number {
  const all = node.inbox.splice(0);
  for (let start = 0; start < all.length; start += perBatch) {
    const msgs = all.slice(start, start + perBatch);
    const slot = 2048;
    const slab = Buffer.alloc(slot * msgs.length);
    const lens = new Int32Array(msgs.length);
    const addrs = Buffer.alloc(ENDPOINT_SIZE * msgs.length);
    msgs.forEach((d, i) => {
      d.msg.copy(slab, i * slot);
      lens[i] = d.msg.length;
      d.from.copy(addrs, i * ENDPOINT_SIZE);
    });
    node.device.handleUdpBatch(slab, slot, lens, addrs, msgs.length);
  }
  node.device.processHandshakes();
  return all.length;
}

function settle(nodes: Node[]): void {
  for (let round = 0; round < 20 && nodes.reduce((sum, n) => sum + deliver(n), 0) > 0; round++);
}

function fromTun(node: Node, to: Node, payloads: string[]): void {
  const slot = node.device.tunSlotSize;
  const slab = Buffer.alloc(slot * payloads.length);
  const lens = new Int32Array(payloads.length);
  payloads.forEach((p, i) => {
    const packet = ipv4Packet(node.overlay, to.overlay, Buffer.from(p));
    packet.copy(slab, i * slot);
    lens[i] = packet.length;
  });
  node.device.handleTunBatch(slab, slot, lens, payloads.length);
}

const texts = (node: Node) => node.tunOut.map((p) => p.subarray(28).toString());
const peerOf = (node: Node, other: Node) => node.device.getPeer(other.device.local.publicKey)!;

describe('Device with batched crypto', () => {
  it('one UDP batch from two peers, interleaved, with forged, replayed and non-WireGuard datagrams: each bad one fails alone', () => {
    const [hub, a, c] = network(3, 64);
    fromTun(a, hub, ['hello a']);
    fromTun(c, hub, ['hello c']);
    settle([hub, a, c]);
    expect(texts(hub).sort()).toEqual(['hello a', 'hello c']);
    hub.tunOut = [];

    fromTun(a, hub, ['a1', 'a2', 'a3']);
    fromTun(c, hub, ['c1', 'c2', 'c3']);
    const fromA = hub.inbox.filter((d) => d.from === a.endpoint);
    const fromC = hub.inbox.filter((d) => d.from === c.endpoint);
    const forged = { msg: Buffer.from(fromC[1].msg), from: c.endpoint };
    forged.msg[forged.msg.length - 1] ^= 1; // its tag
    const replayed = { msg: Buffer.from(fromA[0].msg), from: a.endpoint };
    const garbage = { msg: Buffer.from([0xfe, 1, 2, 3]), from: a.endpoint };
    hub.inbox = [fromA[0], fromC[0], replayed, fromA[1], garbage, forged, fromC[2], fromA[2]];
    deliver(hub);

    const got = texts(hub);
    console.log(`delivered ${got.length} genuine packets of 8 datagrams; replays ${peerOf(hub, a).dropped.replay}, forged ${peerOf(hub, c).dropped.decryptFailed}`);
    expect(got).toEqual(['a1', 'c1', 'a2', 'c3', 'a3']); // c2 is the forged one: its genuine copy never arrived
    expect(hub.device.dropped.malformed).toBe(1);
    expect(peerOf(hub, a).dropped.replay).toBe(1);
    expect(peerOf(hub, a).dropped.decryptFailed).toBe(0);
    expect(peerOf(hub, c).dropped.decryptFailed).toBe(1);
    expect(peerOf(hub, c).dropped.replay).toBe(0);
    // The genuine c2 still opens afterwards: the forgery moved no replay window.
    hub.inbox = [fromC[1]];
    deliver(hub);
    expect(texts(hub).at(-1)).toBe('c2');
  });

  it('a TUN batch and a UDP batch larger than the device batch size go through whole, in order', () => {
    const [x, y] = network(2, 4);
    fromTun(x, y, ['first']);
    settle([x, y]);
    const payloads = Array.from({ length: 23 }, (_, i) => `p${i}`);
    fromTun(x, y, payloads);
    const datagrams = y.inbox.length;
    deliver(y);
    console.log(`23 packets through batches of 4: ${datagrams} datagrams sent, ${y.tunOut.length - 1} delivered`);
    expect(datagrams).toBe(23);
    expect(texts(y).slice(1)).toEqual(payloads);
    expect(x.device.dropped.sendFailed).toBe(0);
  });
});
