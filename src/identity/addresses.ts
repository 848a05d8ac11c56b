import { createHash } from 'node:crypto';
import type { Prefix } from '../ip/prefix.js';

/**
 * Permanent overlay IPv6 addresses. A network's ULA /48 comes from its name (fd + 40 hash bits,
 * RFC 4193 style), and an agent's address inside it from its public key (the remaining 80 bits),
 * so both survive restarts, new underlay IPs and moves between clouds without coordination.
 */
export function networkUlaPrefix(network: string): Prefix {
  return { family: 6, addr: ulaOf(network).slice(), bits: 48 };
}

export function overlayIPv6(network: string, publicKey: Uint8Array): Uint8Array {
  const h = createHash('sha256').update('agentvpn address ').update(publicKey).digest();
  const addr = ulaOf(network).slice();
  addr.set(h.subarray(0, 10), 6);
  return addr;
}

/**
 * A network's /48 as 16 bytes (the host part zero), hashed once per name: the registry derives
 * it for every join and every record it checks. Records name their network before it is
 * checked, so the cache is bounded (a registry or an agent uses one or a few names).
 */
function ulaOf(network: string): Uint8Array {
  let addr = ulaCache.get(network);
  if (!addr) {
    const h = createHash('sha256').update(`agentvpn network ${network}`).digest();
    addr = new Uint8Array(16);
    addr[0] = 0xfd;
    addr.set(h.subarray(0, 5), 1);
    if (ulaCache.size >= ULA_CACHE_SIZE) ulaCache.clear();
    ulaCache.set(network, addr);
  }
  return addr;
}

const ULA_CACHE_SIZE = 64;
const ulaCache = new Map<string, Uint8Array>();
