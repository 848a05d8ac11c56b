import { ENDPOINT_SIZE, formatEndpoint, sameEndpoint, sourceKey } from '../net/endpoint.js';

/**
 * Where a peer is reached, as the Device holds it: an opaque handle (wireguard-go's conn.Endpoint).
 * The Bind (src/paths/magicsock.ts) resolves it at send time: to its direct address, or, for a
 * fleet peer without one, to the relay. The Device never looks inside.
 */
export interface Endpoint {
  /** The address packets go to directly now (20-byte form, src/net/endpoint.ts); null: the Bind carries them another way. */
  readonly direct: Buffer | null;
  /** Names the sender for per-source rate limits (an IPv4 address or an IPv6 /64, or one relayed peer). */
  readonly rateKey: string;
  /**
   * The endpoint after an authenticated packet from the direct address at addrs[aOff] (WireGuard
   * roaming): a plain address follows the packet; a path the path layer chooses stays as it is.
   */
  roamed(addrs: Buffer, aOff: number): Endpoint;
  /** "192.0.2.1:51820", or how the path layer names its choice. */
  toString(): string;
}

/** A plain UDP address: static peers, and whoever sent us a datagram. */
export class UdpEndpoint implements Endpoint {
  readonly direct: Buffer;
  readonly rateKey: string;

  /** Copies the 20-byte endpoint at addrs[off]. */
  constructor(addrs: Buffer, off = 0) {
    this.direct = Buffer.from(addrs.subarray(off, off + ENDPOINT_SIZE));
    this.rateKey = sourceKey(this.direct);
  }

  roamed(addrs: Buffer, aOff: number): Endpoint {
    return sameEndpoint(this.direct, 0, addrs, aOff) ? this : new UdpEndpoint(addrs, aOff);
  }

  toString(): string {
    return formatEndpoint(this.direct);
  }
}
