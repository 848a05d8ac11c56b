/** What the daemon's `status` control method returns; JSON-safe (keys base64, times unix ms). */

export interface PeerStatus {
  publicKey: string;
  endpoint: string | null;
  allowedIps: string[];
  /** Unix ms of the last completed handshake; null when there has been none. */
  latestHandshake: number | null;
  /** Handshakes completed since the daemon started (rekeys included). */
  handshakes: number;
  rxBytes: number;
  txBytes: number;
  /** Transport messages received (authenticated) and sent, where the device counts them (src/metrics reads them). */
  rxPackets?: number;
  txPackets?: number;
  persistentKeepalive: number;
  /** Fleet peers: the path in use (a direct endpoint or the relay) and its last measured RTT; birthdaySocket when it goes through an extra socket birthday probing opened. */
  path?: { kind: 'direct' | 'relay'; endpoint: string; rttMs: number | null; birthdaySocket?: true };
  /** Packets dropped for this peer, by reason. */
  dropped: Record<string, number>;
  /** With a policy filter: the peer's packets it denied both ways (policyDenied + policyRejected), by reason (src/policy/filter.ts DENY_REASONS). */
  policyDenies?: Record<string, number>;
}

export interface DeviceStatus {
  interface: string;
  publicKey: string;
  listenPort: number;
  addresses: string[];
  mtu: number;
  pid: number;
  startedAt: number;
  /** Device-level drops by reason (e.g. no route to a peer). */
  dropped: Record<string, number>;
  /** What needs an operator (registry mode: a known name offering another key, peers waiting for approval). */
  alerts?: string[];
  /** With a policy filter: whether a policy is in force, tracked flows, ICMP answers sent and shed. */
  policy?: Record<string, number | boolean>;
  /** Fleet mode: the path layer's counters (disco in/out, shed by budget, replays refused, relayed packets). */
  pathStats?: Record<string, number>;
  peers: PeerStatus[];
  /** Offloads in force on the TUN (vnet header, TSO, USO) and the UDP socket (GSO, GRO), and their counters
   *  (src/tun/native.ts OffloadStatus). A kernel that refused one shows it false. */
  offloads?: { tun: Record<string, number | boolean>; udp: Record<string, number | boolean> };
  /** The daemon's packet filter (absent while the daemon is still starting). */
  firewall?: FirewallStatus;
}

/** The nftables table that keeps the overlay addresses reachable through the tunnel only. */
export interface FirewallStatus {
  /** False when the daemon was started with --no-firewall. */
  enabled: boolean;
  /** "inet agentvpn_<iface>" while installed. */
  table: string | null;
  /** Overlay prefixes guarded: reachable from, and as sources accepted on, the TUN and lo only. */
  prefixes: string[];
  /** Packets dropped: sent to an overlay address from another interface, or with an overlay source. Null if unreadable. */
  dropped: { toOverlay: number; spoofedSource: number } | null;
}
