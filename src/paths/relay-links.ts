import { sameEndpoint } from '../net/endpoint.js';
import { relayChoice as C } from './constants.js';
import type { PeerPath } from './peer-path.js';

/** The relay client as the socket layer uses it (src/relay/client.ts). */
export interface RelayLink {
  readonly endpoint: Buffer;
  readonly name: string;
  readonly state: string;
  handleDatagram(buf: Buffer, off: number, len: number): boolean;
  send(dstWgKey: Uint8Array, packet: Uint8Array): boolean;
  /** Whether the relay sees that agent's session come from the IP of `claimed`; false also when unknown (relay/protocol.ts, PEER_ADDR). */
  confirmsPeerAddress?(wgKey: Uint8Array, claimed: Uint8Array): Promise<boolean>;
}

/** How the Bind finds the relay link for a relayed peer, and the link a relay frame came in on. */
export interface RelayRouter {
  /** The link a peer's relayed packets go through now (its home relay's, opened on demand), or null: no relay. */
  linkFor(path: PeerPath, now: number): RelayLink | null;
  /** The name of the relay linkFor would use, without opening anything (for status). */
  nameFor(path: PeerPath): string | null;
  /** The link whose relay sent the datagram from addrs[off], if any. */
  linkAt(addrs: Buffer, off: number): RelayLink | null;
}

/** A relay link with a lifecycle (src/relay/client.ts's RelayClient). */
export interface ManagedLink extends RelayLink {
  start(): void;
  stop(): void;
}

/** One relay, the network's only one: every peer goes through it (also the fakes in tests). */
export function singleRelay(link: RelayLink): RelayRouter {
  return {
    linkFor: () => link,
    nameFor: () => link.name,
    linkAt: (addrs, off) => (sameEndpoint(link.endpoint, 0, addrs, off) ? link : null),
  };
}

interface Entry<L> {
  link: L;
  lastUsedAt: number;
}

function isUp(link: RelayLink): boolean {
  return link.state === 'udp' || link.state === 'tcp';
}

/**
 * The relay links an agent holds, as Tailscale holds DERP connections: one to its home relay
 * (where its peers reach it), and one to the home relay of each peer it sends to (opened on
 * demand, at most `maxLinks` in all, closed when unused for `linkIdleMs`). A peer whose record
 * names no relay (an older agent) is sent through the first advertised relay, the one older
 * agents use; one that names a relay not advertised to us, through our home relay. While a
 * peer's relay does not answer (it died, the peer is moving), its packets go through our home
 * relay, where the peer has a session as long as it talks to us. A link dials its relay by the
 * advertisement `open` is given for its name, and its hellos are signed for that advertised name
 * (relay/relay-name.ts; "" when the registry gave none), so only the relay of that name takes them.
 */
export class RelayLinks<L extends ManagedLink> implements RelayRouter {
  private readonly entries = new Map<string, Entry<L>>();
  private home: Entry<L> | null = null;
  private homeName: string | null = null;
  /** Where older agents (records without a home relay) are: the first relay the registry lists. */
  private readonly firstListed: string | null;

  /** `advertised`: relay names we may open, in the registry's order; `open` makes a (not yet started) link to one. */
  constructor(private readonly advertised: Set<string>, private readonly open: (name: string) => L) {
    this.firstListed = advertised.values().next().value ?? null;
  }

  get homeRelay(): string | null {
    return this.homeName;
  }

  /** Makes `name` our home relay (opening its link if needed); the previous home's link stays until idle. False: no such usable relay. */
  setHome(name: string, now: number): boolean {
    if (name === this.homeName) return true;
    const e = this.advertised.has(name) ? this.entries.get(name) ?? this.add(name, now) : null;
    if (!e) return false;
    this.homeName = name;
    this.home = e;
    e.lastUsedAt = now;
    return true;
  }

  /** The link of relay `name`, if open. */
  linkOf(name: string): L | null {
    return this.entries.get(name)?.link ?? null;
  }

  linkFor(path: PeerPath, now: number): RelayLink | null {
    const home = this.home;
    const name = path.homeRelay ?? this.firstListed;
    let e = name === null || name === this.homeName ? home : this.entries.get(name) ?? this.openOnDemand(name, now);
    if (e !== home && home && (!e || !isUp(e.link)) && isUp(home.link)) e = home;
    if (!e) return home?.link ?? null;
    e.lastUsedAt = now;
    return e.link;
  }

  nameFor(path: PeerPath): string | null {
    const name = path.homeRelay ?? this.firstListed;
    const e = name === null ? undefined : this.entries.get(name);
    return e && isUp(e.link) ? name : this.homeName;
  }

  linkAt(addrs: Buffer, off: number): RelayLink | null {
    for (const e of this.entries.values()) if (sameEndpoint(e.link.endpoint, 0, addrs, off)) return e.link;
    return null;
  }

  /** Every open link (to re-key them after a rotation, for status). */
  links(): [string, L][] {
    return [...this.entries].map(([name, e]) => [name, e.link]);
  }

  /** Closes peers' relay links unused for linkIdleMs (never the home link). */
  closeIdle(now: number): void {
    for (const [name, e] of this.entries) {
      if (e === this.home || now - e.lastUsedAt < C.linkIdleMs) continue;
      e.link.stop();
      this.entries.delete(name);
    }
  }

  stop(): void {
    for (const e of this.entries.values()) e.link.stop();
    this.entries.clear();
    this.home = null;
    this.homeName = null;
  }

  private openOnDemand(name: string, now: number): Entry<L> | null {
    if (!this.advertised.has(name) || this.entries.size >= C.maxLinks) return null;
    return this.add(name, now);
  }

  /** Opens and starts a link; null when the relay's advertisement is unusable (a bad URL): it is not tried again. */
  private add(name: string, now: number): Entry<L> | null {
    let link: L;
    try {
      link = this.open(name);
    } catch {
      this.advertised.delete(name);
      return null;
    }
    const e = { link, lastUsedAt: now };
    this.entries.set(name, e);
    link.start();
    return e;
  }
}
