import { formatPrefix, networkOf, parsePrefix, type Prefix } from './prefix.js';

/** Where an overlay's IPv4 pool may lie: shared address space (RFC 6598) and private space (RFC 1918), never the internet's. */
const OVERLAY_POOL_SPACE = ['100.64.0.0/10', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16'].map((p) => parsePrefix(p)!);

/**
 * Whether an IPv4 pool lies wholly inside that space: an agent routes its whole pool into the
 * tunnel, so a pool of public addresses would carry traffic meant for the internet.
 */
export function isOverlayPool(pool: Prefix): boolean {
  return pool.family === 4 && OVERLAY_POOL_SPACE.some((space) => pool.bits >= space.bits
    && formatPrefix(networkOf({ ...pool, bits: space.bits })) === formatPrefix(space));
}
