import type { Prefix } from '../ip/prefix.js';

/** One WireGuard device as a wg-quick file describes it, validated and decoded. */
export interface DeviceConfig {
  privateKey: Uint8Array;
  addresses: Prefix[];
  /** UDP port to listen on; 0 picks a random free port. */
  listenPort: number;
  /** Tunnel MTU; 1420 (like wg-quick) when the file does not say. */
  mtu: number;
  peers: PeerConfig[];
}

export interface PeerConfig {
  publicKey: Uint8Array;
  presharedKey?: Uint8Array;
  /** Networks routed to this peer, host bits cleared as WireGuard stores them. */
  allowedIps: Prefix[];
  endpoint?: { host: string; port: number };
  /** Seconds between keepalives; 0 means off. */
  persistentKeepalive: number;
}

export const DEFAULT_MTU = 1420;
