import type { PeerChange, UapiDeviceState } from './protocol.js';

/**
 * What the UAPI needs from a WireGuard device: a snapshot for get=1 and the changes set=1 makes.
 * src/uapi/device-target.ts implements it on the daemon; tests use an in-memory one. Methods may
 * throw UapiError (its errno goes back to the client); anything else is answered with EIO.
 */
export interface UapiTarget {
  state(): UapiDeviceState;
  /** Our public key, to skip a peer section naming ourselves (as wireguard-go does); null without a key. */
  publicKey(): Uint8Array | null;
  /** null: clear the key (no handshakes until one is set). */
  setPrivateKey(key: Uint8Array | null): void;
  /** Rebinds the UDP socket; throws UapiError(EADDRINUSE) when the port is taken, leaving the old one. */
  setListenPort(port: number): Promise<void>;
  setFwmark(mark: number): void;
  hasPeer(publicKey: Uint8Array): boolean;
  removePeer(publicKey: Uint8Array): void;
  removeAllPeers(): void;
  /**
   * Creates the peer if it does not exist, then applies the section's PSK, endpoint, keepalive
   * (turning it on sends a keepalive at once) and allowed-IP operations in order.
   * `remove` and `updateOnly` are already handled by the caller.
   */
  upsertPeer(change: PeerChange): void;
}
