import { formatPrefix, networkOf, type Prefix } from '../../src/ip/prefix.js';
import { publicKeyOf } from '../../src/crypto/x25519.js';
import { ERRNO, UapiError, type PeerChange, type UapiDeviceState, type UapiPeerState } from '../../src/uapi/protocol.js';
import type { UapiTarget } from '../../src/uapi/target.js';

const hex = (k: Uint8Array) => Buffer.from(k).toString('hex');

/** A WireGuard device as plain data: what the UAPI layer does to a device, observable in tests. */
export class MemoryTarget implements UapiTarget {
  privateKey: Uint8Array | null = null;
  listenPort = 0;
  fwmark = 0;
  readonly peers = new Map<string, UapiPeerState>();
  /** Ports setListenPort refuses as taken. */
  readonly takenPorts = new Set<number>();
  keepalivesSent: string[] = [];

  state(): UapiDeviceState {
    return { privateKey: this.privateKey, listenPort: this.listenPort, fwmark: this.fwmark, peers: [...this.peers.values()] };
  }

  publicKey(): Uint8Array | null {
    return this.privateKey ? publicKeyOf(this.privateKey) : null;
  }

  setPrivateKey(key: Uint8Array | null): void {
    this.privateKey = key;
    if (key) this.peers.delete(hex(publicKeyOf(key)));
  }

  async setListenPort(port: number): Promise<void> {
    if (this.takenPorts.has(port)) throw new UapiError(ERRNO.EADDRINUSE, `port ${port} is taken`);
    this.listenPort = port === 0 ? 40000 : port;
  }

  setFwmark(mark: number): void {
    this.fwmark = mark;
  }

  hasPeer(k: Uint8Array): boolean {
    return this.peers.has(hex(k));
  }

  removePeer(k: Uint8Array): void {
    this.peers.delete(hex(k));
  }

  removeAllPeers(): void {
    this.peers.clear();
  }

  upsertPeer(c: PeerChange): void {
    let p = this.peers.get(hex(c.publicKey));
    if (!p) {
      p = { publicKey: c.publicKey, presharedKey: null, endpoint: null, lastHandshakeMs: null, rxBytes: 0, txBytes: 0, persistentKeepalive: 0, allowedIps: [] };
      this.peers.set(hex(c.publicKey), p);
    }
    if (c.presharedKey) p.presharedKey = c.presharedKey.every((b) => b === 0) ? null : c.presharedKey;
    if (c.endpoint) p.endpoint = c.endpoint;
    if (c.persistentKeepalive !== undefined) {
      if (p.persistentKeepalive === 0 && c.persistentKeepalive !== 0) this.keepalivesSent.push(hex(c.publicKey));
      p.persistentKeepalive = c.persistentKeepalive;
    }
    for (const op of c.allowedIps) {
      if (op.kind === 'replace') p.allowedIps = [];
      else {
        const net = networkOf(op.prefix);
        const same = (q: Prefix) => formatPrefix(q) === formatPrefix(net);
        // A prefix belongs to one peer: adding it here takes it from any other.
        if (op.kind === 'add') for (const other of this.peers.values()) other.allowedIps = other.allowedIps.filter((q) => !same(q));
        p.allowedIps = op.kind === 'add' ? [...p.allowedIps, net] : p.allowedIps.filter((q) => !same(q));
      }
    }
  }
}
