import type { Endpoint } from './endpoint.js';

/**
 * The seams of the data path, as wireguard-go has them (conn.Bind, tun.Device). Batches are a
 * slab with per-packet offsets and lengths, the shape the native addon's batched syscalls take.
 */

/** The UDP side: owns the socket; hands the Device WireGuard datagrams only (src/paths/magicsock.ts). */
export interface Bind {
  /** Sends packet i < count to endpoints[i], resolving each at send time; returns how many went out. */
  send(slab: Buffer, offsets: Int32Array, lens: Int32Array, endpoints: readonly Endpoint[], count: number): number;
  /** The endpoint of a peer the Bind knows at this direct address (a fleet peer's path), or null. */
  endpointAt(addrs: Buffer, aOff: number): Endpoint | null;
}

/** The TUN side: writes decrypted IP packets; returns how many were written. */
export interface TunDevice {
  write(slab: Buffer, offsets: Int32Array, lens: Int32Array, count: number): number;
}
