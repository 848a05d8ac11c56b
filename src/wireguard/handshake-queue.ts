import { ENDPOINT_SIZE } from '../net/endpoint.js';
import type { Endpoint } from './endpoint.js';
import { INITIATION_SIZE } from './constants.js';

/**
 * Handshake messages waiting for the handshake work (mac checks, cookies, Diffie-Hellman), which
 * runs beside the packet loop instead of inside it. Copying a message in is all the packet loop
 * pays; when the ring is full, more are dropped at that same cost. Two lanes: messages from a
 * known peer's endpoint go first, so a flood from elsewhere cannot push a real peer's handshake out.
 * Each message keeps its source: the direct address it came from, and the peer's endpoint when the
 * Bind carried it another way (the relay).
 */
const SLOT = INITIATION_SIZE + ENDPOINT_SIZE;

class Ring {
  private readonly slab: Buffer;
  private readonly lens: Int32Array;
  private readonly via: (Endpoint | null)[];
  private head = 0;
  length = 0;

  constructor(readonly capacity: number) {
    this.slab = Buffer.alloc(capacity * SLOT);
    this.lens = new Int32Array(capacity);
    this.via = new Array<Endpoint | null>(capacity).fill(null);
  }

  push(buf: Buffer, off: number, len: number, addrs: Buffer, aOff: number, via: Endpoint | null): boolean {
    if (this.length === this.capacity || len > INITIATION_SIZE) return false;
    const i = (this.head + this.length) % this.capacity;
    buf.copy(this.slab, i * SLOT, off, off + len);
    addrs.copy(this.slab, i * SLOT + INITIATION_SIZE, aOff, aOff + ENDPOINT_SIZE);
    this.lens[i] = len;
    this.via[i] = via;
    this.length++;
    return true;
  }

  /** The oldest message and its source, valid until the next push; call `drop` when done. */
  peek(): [Buffer, Buffer, Endpoint | null] {
    const o = this.head * SLOT;
    return [this.slab.subarray(o, o + this.lens[this.head]), this.slab.subarray(o + INITIATION_SIZE, o + SLOT), this.via[this.head]];
  }

  drop(): void {
    this.via[this.head] = null;
    this.head = (this.head + 1) % this.capacity;
    this.length--;
  }

  clear(): void {
    this.via.fill(null);
    this.head = 0;
    this.length = 0;
  }
}

export class HandshakeQueue {
  private readonly known: Ring;
  private readonly others: Ring;

  constructor(knownCapacity: number, othersCapacity: number) {
    this.known = new Ring(knownCapacity);
    this.others = new Ring(othersCapacity);
  }

  hasRoom(known: boolean): boolean {
    const ring = known ? this.known : this.others;
    return ring.length < ring.capacity;
  }

  /** Copies the message in; false (dropped) when its lane is full. */
  push(known: boolean, buf: Buffer, off: number, len: number, addrs: Buffer, aOff: number, via: Endpoint | null): boolean {
    return (known ? this.known : this.others).push(buf, off, len, addrs, aOff, via);
  }

  get length(): number {
    return this.known.length + this.others.length;
  }

  /** How full the shared lane is (0..1): the flood signal that puts the device under load. */
  get pressure(): number {
    return this.others.length / this.others.capacity;
  }

  /** Hands up to `max` messages to `handle`, known lane first, oldest first; returns how many. */
  drain(max: number, handle: (msg: Buffer, source: Buffer, via: Endpoint | null) => void): number {
    let n = 0;
    for (; n < max; n++) {
      const ring = this.known.length > 0 ? this.known : this.others.length > 0 ? this.others : null;
      if (!ring) break;
      const [msg, source, via] = ring.peek();
      try {
        handle(msg, source, via);
      } finally {
        ring.drop();
      }
    }
    return n;
  }

  clear(): void {
    this.known.clear();
    this.others.clear();
  }
}
