import { isAgentVpnError } from '../errors.js';
import { generatePrivateKey, publicKeyOf } from '../crypto/x25519.js';
import { endpointAddress, endpointPort, makeEndpoint } from '../net/endpoint.js';
import type { Device } from '../wireguard/device.js';
import { UdpEndpoint } from '../wireguard/endpoint.js';
import type { Peer } from '../wireguard/peer.js';
import { ERRNO, UapiError, type PeerChange, type UapiDeviceState, type UapiPeerState } from './protocol.js';
import type { UapiTarget } from './target.js';

/** What the UAPI needs from the daemon around its Device (src/daemon/daemon.ts). */
export interface UapiHost {
  readonly device: Device;
  listenPort(): number;
  /** Opens the new UDP socket before closing the old one; throws AgentVpnError UDP_PORT_IN_USE. */
  rebind(port: number): Promise<void>;
  /** Removes the peer with its path-layer state. */
  removePeer(publicKey: Uint8Array): void;
}

const isZero = (k: Uint8Array) => k.every((b) => b === 0);

/**
 * UapiTarget on the daemon's WireGuard Device. As wireguard-go, it installs no routes: wg(8)
 * configures WireGuard, wg-quick or the operator the routes.
 *
 * A Device always holds some private key; `wg-userspace` starts with a random one it does not
 * report (get=1 has no private_key until one is set), as wireguard-go starts keyless.
 */
export class DeviceUapiTarget implements UapiTarget {
  constructor(private readonly host: UapiHost, private keySet = true) {}

  private get device(): Device {
    return this.host.device;
  }

  state(): UapiDeviceState {
    const device = this.device;
    return {
      privateKey: this.keySet ? device.local.privateKey : null,
      listenPort: this.host.listenPort(),
      fwmark: 0,
      peers: device.allPeers().map((p) => this.peerState(p)),
    };
  }

  private peerState(p: Peer): UapiPeerState {
    const direct = p.endpoint?.direct ?? null;
    const psk = p.handshake.presharedKey;
    return {
      publicKey: p.publicKey,
      presharedKey: isZero(psk) ? null : psk,
      endpoint: direct ? { address: endpointAddress(direct), port: endpointPort(direct) } : null,
      lastHandshakeMs: p.latestHandshakeAt,
      rxBytes: p.rxBytes,
      txBytes: p.txBytes,
      persistentKeepalive: p.persistentKeepalive,
      allowedIps: this.device.allowedIps.prefixesOf(p),
    };
  }

  publicKey(): Uint8Array | null {
    return this.keySet ? this.device.local.publicKey : null;
  }

  setPrivateKey(key: Uint8Array | null): void {
    this.keySet = key !== null;
    this.device.setPrivateKey(key ?? generatePrivateKey());
    // A peer with our own public key cannot be talked to: wireguard-go drops it too.
    if (key) this.host.removePeer(publicKeyOf(key));
  }

  async setListenPort(port: number): Promise<void> {
    if (port !== 0 && port === this.host.listenPort()) return;
    try {
      await this.host.rebind(port);
    } catch (e) {
      if (isAgentVpnError(e) && e.code === 'UDP_PORT_IN_USE') throw new UapiError(ERRNO.EADDRINUSE, e.message);
      throw e;
    }
  }

  setFwmark(mark: number): void {
    // Marking our UDP socket (SO_MARK) is not implemented; claiming a mark we do not set would let
    // wg-quick's default-route rules send our own packets back into the tunnel.
    if (mark !== 0) throw new UapiError(ERRNO.EOPNOTSUPP, 'fwmark is not supported by agentvpn');
  }

  hasPeer(publicKey: Uint8Array): boolean {
    return this.device.getPeer(publicKey) !== undefined;
  }

  removePeer(publicKey: Uint8Array): void {
    this.host.removePeer(publicKey);
  }

  removeAllPeers(): void {
    for (const p of this.device.allPeers()) this.host.removePeer(p.publicKey);
  }

  upsertPeer(c: PeerChange): void {
    const device = this.device;
    const endpoint = c.endpoint ? new UdpEndpoint(makeEndpoint(c.endpoint.address, c.endpoint.port)) : null;
    const psk = c.presharedKey && !isZero(c.presharedKey) ? c.presharedKey : undefined;
    let peer = device.getPeer(c.publicKey);
    const keepaliveWasOff = !peer || peer.persistentKeepalive === 0;
    if (!peer) {
      peer = device.addPeer({ publicKey: c.publicKey, presharedKey: psk, endpoint, persistentKeepalive: c.persistentKeepalive ?? 0, allowedIps: [] });
    } else {
      if (c.presharedKey) device.setPresharedKey(peer, c.presharedKey);
      if (endpoint) device.setEndpoint(peer, endpoint);
      if (c.persistentKeepalive !== undefined) peer.persistentKeepalive = c.persistentKeepalive;
    }
    for (const op of c.allowedIps) {
      if (op.kind === 'replace') device.allowedIps.removeValue(peer);
      else if (op.kind === 'add') device.allowedIps.insert(op.prefix, peer);
      else device.allowedIps.remove(op.prefix, peer); // only the peer's own: another's equal prefix stays
    }
    // Turning keepalives on sends one at once (wireguard-go): a NAT mapping opens without waiting.
    if (keepaliveWasOff && peer.persistentKeepalive > 0) device.keepaliveNow(peer);
  }

}
