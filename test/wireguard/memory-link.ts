import { Device, type Logger } from '../../src/wireguard/device.js';
import { makeEndpoint, ENDPOINT_SIZE } from '../../src/net/endpoint.js';
import type { Bind, TunDevice } from '../../src/wireguard/bind.js';
import { UdpEndpoint } from '../../src/wireguard/endpoint.js';

/** Two devices joined by an in-memory "network": each side's UDP sends are queued for the other. */
export interface Side {
  device: Device;
  endpoint: Buffer;
  /** Datagrams in flight to this side. */
  inbox: Buffer[];
  /** Packets this side wrote to its "TUN". */
  tunOut: Buffer[];
}

export function makeSide(privateKey: Uint8Array, addr: number[], port: number, peerInbox: () => Buffer[][], log?: Logger): Side {
  const side = {} as Side;
  side.endpoint = makeEndpoint(Uint8Array.from(addr), port);
  side.inbox = [];
  side.tunOut = [];
  side.device = new Device({ privateKey, mtu: 1420, batchSize: 64, log, bind: memoryBind(() => peerInbox()[0]), tun: memoryTun(() => side.tunOut) });
  return side;
}

/** A Bind whose sends all land in one inbox, whatever their endpoint. */
export function memoryBind(inbox: () => Buffer[]): Bind {
  return {
    send(slab, offsets, lens, _endpoints, count) {
      for (let i = 0; i < count; i++) inbox().push(Buffer.from(slab.subarray(offsets[i], offsets[i] + lens[i])));
      return count;
    },
    endpointAt: () => null,
  };
}

/** A TUN that keeps what is written to it. */
export function memoryTun(out: () => Buffer[]): TunDevice {
  return {
    write(slab, offsets, lens, count) {
      for (let i = 0; i < count; i++) out().push(Buffer.from(slab.subarray(offsets[i], offsets[i] + lens[i])));
      return count;
    },
  };
}

/** A plain-address endpoint for a side (what a static peer's Endpoint line gives). */
export function udpEndpoint(side: { endpoint: Buffer }): UdpEndpoint {
  return new UdpEndpoint(side.endpoint);
}

/** Delivers queued datagrams to `to`, as if from `from`'s endpoint, until none are left. */
export function deliver(to: Side, from: Side): number {
  const msgs = to.inbox.splice(0);
  if (msgs.length === 0) return 0;
  const slot = 2048;
  const slab = Buffer.alloc(slot * msgs.length);
  const lens = new Int32Array(msgs.length);
  const addrs = Buffer.alloc(ENDPOINT_SIZE * msgs.length);
  msgs.forEach((m, i) => {
    m.copy(slab, i * slot);
    lens[i] = m.length;
    from.endpoint.copy(addrs, i * ENDPOINT_SIZE);
  });
  to.device.handleUdpBatch(slab, slot, lens, addrs, msgs.length);
  to.device.processHandshakes(); // what the event loop's next turn would do
  return msgs.length;
}

/** Feeds IP packets into a side's device as if read from its TUN. */
export function sendFromTun(side: Side, packets: Buffer[]): void {
  const slot = side.device.tunSlotSize;
  const slab = Buffer.alloc(slot * packets.length);
  const lens = new Int32Array(packets.length);
  packets.forEach((p, i) => {
    p.copy(slab, i * slot);
    lens[i] = p.length;
  });
  side.device.handleTunBatch(slab, slot, lens, packets.length);
}

/** A minimal IPv4/UDP packet from src to dst carrying `payload`. */
export function ipv4Packet(src: number[], dst: number[], payload: Buffer): Buffer {
  const p = Buffer.alloc(28 + payload.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p[8] = 64;
  p[9] = 17;
  p.set(src, 12);
  p.set(dst, 16);
  p.writeUInt16BE(1000, 20);
  p.writeUInt16BE(2000, 22);
  p.writeUInt16BE(8 + payload.length, 24);
  payload.copy(p, 28);
  return p;
}
