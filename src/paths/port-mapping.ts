/** A UDP port mapping held on the gateway, by whichever protocol got it (natpmp.ts: PCP, NAT-PMP; upnp.ts: UPnP-IGD). */
export interface PortMapping {
  /** 'upnp': UPnP-IGD (upnp.ts), asked when neither PCP nor NAT-PMP answers. */
  protocol: 'nat-pmp' | 'pcp' | 'upnp';
  /** External IPv4 address of the NAT (4 bytes). */
  externalAddress: Uint8Array;
  externalPort: number;
  /** Lifetime the server granted; renew before it runs out. */
  lifetimeSec: number;
  /** The gateway that holds the mapping. */
  gateway: string;
  /** PCP only: the mapping nonce, needed to renew or delete it (RFC 6887 §11.1). */
  nonce?: Uint8Array;
  /** Server epoch (seconds since its mappings were last lost); a jump backwards means re-map. */
  epochSec?: number;
  /** UPnP only: the control URL that holds it, and the LAN address it forwards to. */
  upnp?: UpnpService & { internalClient: string };
}

/** A UPnP-IGD WANIPConnection service on the gateway. */
export interface UpnpService {
  /** The device that answered (its IPv4 address): every URL we fetch is on it. */
  host: string;
  controlUrl: string;
  serviceType: string;
}
