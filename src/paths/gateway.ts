/**
 * The default IPv4 gateway of the current network namespace, read from /proc/net/route (no
 * shell, no netlink): where NAT-PMP/PCP requests go (RFC 6886 §3: the client sends to its
 * default gateway).
 */
import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';

const RTF_UP = 0x0001;
const RTF_GATEWAY = 0x0002;

export interface DefaultRoute {
  iface: string;
  /** Dotted-quad IPv4 address of the next hop. */
  gateway: string;
  metric: number;
}

/**
 * /proc/net/route prints addresses as the kernel's u32 in host byte order, in hex ("0102A8C0"
 * is 192.168.2.1 on a little-endian machine).
 */
function hexToIPv4(hex: string, littleEndian: boolean): string | null {
  if (!/^[0-9A-Fa-f]{8}$/.test(hex)) return null;
  const bytes = [0, 2, 4, 6].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return (littleEndian ? bytes.reverse() : bytes).join('.');
}

/**
 * The default routes (destination 0.0.0.0/0, up, via a gateway) in a /proc/net/route text,
 * lowest metric first. Lines that do not parse are skipped.
 */
export function parseDefaultRoutes(text: string, littleEndian = endianness() === 'LE'): DefaultRoute[] {
  const routes: DefaultRoute[] = [];
  const lines = text.split('\n');
  for (const line of lines.slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const [iface, dest, gw, flagsHex, , , metricText, mask] = f as [string, string, string, string, string, string, string, string];
    const flags = parseInt(flagsHex, 16);
    if (!Number.isFinite(flags) || (flags & (RTF_UP | RTF_GATEWAY)) !== (RTF_UP | RTF_GATEWAY)) continue;
    if (dest !== '00000000' || mask !== '00000000') continue;
    const gateway = hexToIPv4(gw, littleEndian);
    const metric = Number(metricText);
    if (gateway === null || gateway === '0.0.0.0' || !Number.isInteger(metric)) continue;
    routes.push({ iface, gateway, metric });
  }
  return routes.sort((a, b) => a.metric - b.metric);
}

/**
 * The default IPv4 gateway ("192.168.1.1"), or null when there is none (or /proc is not
 * readable). `routeFile` reads another file, e.g. /proc/<pid>/net/route for another namespace.
 */
export function defaultGatewayV4(routeFile = '/proc/net/route'): string | null {
  let text: string;
  try {
    text = readFileSync(routeFile, 'utf8');
  } catch {
    return null;
  }
  return parseDefaultRoutes(text)[0]?.gateway ?? null;
}

/** Alias of defaultGatewayV4() (port mapping protocols are IPv4-only). */
export const defaultGateway = defaultGatewayV4;
