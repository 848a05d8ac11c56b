import { formatPrefix, networkOf, parseAddress, type Prefix } from '../ip/prefix.js';

/** Whether the address (text) lies inside the prefix. */
export function inPrefix(address: string, prefix: Prefix): boolean {
  const a = parseAddress(address);
  return !!a && a.length === prefix.addr.length && formatPrefix(networkOf({ family: prefix.family, addr: a, bits: prefix.bits })) === formatPrefix(networkOf(prefix));
}
