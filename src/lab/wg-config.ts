/**
 * A WireGuard interface configuration as a plain object, and its wg-quick style text form
 * (the format agentvpn's daemon reads with `--config`).
 */

export interface WgPeerConfig {
  /** base64 */
  publicKey: string;
  /** base64 */
  presharedKey?: string;
  /** CIDRs, IPv4 and IPv6 */
  allowedIps: string[];
  /** host:port, IPv6 as [addr]:port */
  endpoint?: string;
  /** seconds */
  persistentKeepalive?: number;
}

export interface WgInterfaceConfig {
  /** base64 */
  privateKey: string;
  listenPort?: number;
  /** Interface addresses, CIDR (e.g. '100.64.0.1/24', 'fd00:a::1/64'). */
  addresses: string[];
  /** Default 1420. */
  mtu?: number;
  peers: WgPeerConfig[];
}

export const DEFAULT_WG_MTU = 1420;

/** Renders the config as wg-quick text: [Interface] PrivateKey/Address/ListenPort/MTU, then [Peer]s. */
export function renderWgQuickConfig(cfg: WgInterfaceConfig): string {
  const lines = ['[Interface]', `PrivateKey = ${cfg.privateKey}`];
  if (cfg.addresses.length > 0) lines.push(`Address = ${cfg.addresses.join(', ')}`);
  if (cfg.listenPort !== undefined) lines.push(`ListenPort = ${cfg.listenPort}`);
  lines.push(`MTU = ${cfg.mtu ?? DEFAULT_WG_MTU}`);
  for (const p of cfg.peers) {
    lines.push('', '[Peer]', `PublicKey = ${p.publicKey}`);
    if (p.presharedKey) lines.push(`PresharedKey = ${p.presharedKey}`);
    if (p.allowedIps.length > 0) lines.push(`AllowedIPs = ${p.allowedIps.join(', ')}`);
    if (p.endpoint) lines.push(`Endpoint = ${p.endpoint}`);
    if (p.persistentKeepalive) lines.push(`PersistentKeepalive = ${p.persistentKeepalive}`);
  }
  return `${lines.join('\n')}\n`;
}
