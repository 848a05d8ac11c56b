import { createHash } from 'node:crypto';
import type { Prefix } from '../ip/prefix.js';

/**
 * Permanent overlay IPv6 addresses. A network's ULA /48 comes from its name (fd + 40 hash bits,
 * RFC 4193 style), and an agent's address inside it from its public key (the remaining 80 bits),
 * so both survive restarts, new underlay IPs and moves between clouds without coordination.
 */
export function networkUlaPrefix(network: string): Prefix {
  const h = createHash('sha256').update(`agentvpn network ${network}`).digest();
  const addr = new Uint8Array(16);
  addr[0] = 0xfd;
  addr.set(h.subarray(0, 5), 1);
  return { family: 6, addr, bits: 48 };
}

export function overlayIPv6(network: string, publicKey: Uint8Array): Uint8Array {
  const prefix = networkUlaPrefix(network);
  const h = createHash('sha256').update('agentvpn address ').update(publicKey).digest();
  const addr = new Uint8Array(prefix.addr);
  addr.set(h.subarray(0, 10), 6);
  return addr;
}
