/**
 * Where a device's packets go: batches described by a slab and per-packet offsets/lengths,
 * the shape the native addon's batched syscalls take. Tests can plug in an in-memory pair.
 */
export interface PacketIO {
  /** Sends packets i < count to the endpoints at addrs[i * ENDPOINT_SIZE]; returns how many went out. */
  sendUdp(slab: Buffer, offsets: Int32Array, lens: Int32Array, addrs: Buffer, count: number): number;
  /** Writes decrypted IP packets to the TUN device; returns how many were written. */
  writeTun(slab: Buffer, offsets: Int32Array, lens: Int32Array, count: number): number;
}
