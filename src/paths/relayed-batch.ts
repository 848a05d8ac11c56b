import { ENDPOINT_SIZE } from '../net/endpoint.js';
import { MAX_PACKET_SIZE, PACKET_HEADER_SIZE } from '../relay/protocol.js';
import type { Endpoint } from '../wireguard/endpoint.js';

/** A relay SEND frame slot: the frame header and the largest packet a frame carries. */
export const RELAY_SLOT = PACKET_HEADER_SIZE + MAX_PACKET_SIZE;
/** Relayed packets handed to the device per call, as the UDP reader's batch. */
export const RELAYED_BATCH = 64;

/**
 * Packets that arrived through the relay, gathered in a slab of device-sized slots so the device
 * gets them in batches as it gets direct ones; each slot remembers the peer's endpoint (the relay
 * authenticated the sender). Allocated once per slot size, then reused.
 */
export class InboundRelayed {
  readonly slab: Buffer;
  readonly lens = new Int32Array(RELAYED_BATCH);
  /** Zero: relayed packets have no direct address. */
  readonly addrs = Buffer.alloc(RELAYED_BATCH * ENDPOINT_SIZE);
  readonly via: Endpoint[] = [];
  count = 0;

  constructor(readonly slot: number) {
    this.slab = Buffer.alloc(slot * RELAYED_BATCH);
  }

  /** Copies a packet in; false when it does not fit a slot. */
  add(packet: Buffer, from: Endpoint): boolean {
    if (packet.length > this.slot) return false;
    packet.copy(this.slab, this.count * this.slot);
    this.lens[this.count] = packet.length;
    this.via[this.count++] = from;
    return true;
  }

  get full(): boolean {
    return this.count === RELAYED_BATCH;
  }
}

/**
 * An outbound batch as the socket sends it: each packet is in the caller's slab (from 0) or is a
 * relay SEND frame in `frames` (from 1). Grown to the largest batch once and kept.
 */
export class OutboundMixed {
  offsets = new Int32Array(0);
  lens = new Int32Array(0);
  addrs = Buffer.alloc(0);
  from = new Uint8Array(0);
  frames = Buffer.alloc(0);

  reserve(count: number): this {
    if (this.offsets.length < count) {
      this.offsets = new Int32Array(count);
      this.lens = new Int32Array(count);
      this.addrs = Buffer.alloc(count * ENDPOINT_SIZE);
      this.from = new Uint8Array(count);
      this.frames = Buffer.alloc(count * RELAY_SLOT);
    }
    return this;
  }
}
