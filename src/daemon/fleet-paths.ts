import { networkInterfaces } from 'node:os';
import type { Logger as PinoLogger } from 'pino';
import { AgentVpnError } from '../errors.js';
import type { Identity } from '../identity/identity.js';
import { parseAddress } from '../ip/prefix.js';
import type { JoinResult } from '../registry/client.js';
import { makeEndpoint } from '../net/endpoint.js';
import { DiscoCodec } from '../paths/disco.js';
import { defaultGateway } from '../paths/gateway.js';
import { Netcheck, parseHostPort, type NetcheckReport } from '../paths/netcheck.js';
import { releaseUdpMapping } from '../paths/natpmp.js';
import { RelayClient } from '../relay/client.js';
import { resolveEndpoint, type Daemon } from './daemon.js';

/** Candidate endpoints we publish, at most (the record's cap). */
const MAX_CANDIDATES = 16;

/** Underlay addresses worth publishing: not loopback, not link-local, not our own overlay. */
export function localEndpoints(port: number, exclude: string): string[] {
  const out: string[] = [];
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (name === exclude) continue;
    for (const a of addrs ?? []) {
      if (a.internal || (a.family === 'IPv6' && a.address.toLowerCase().startsWith('fe80'))) continue;
      out.push(a.family === 'IPv4' ? `${a.address}:${port}` : `[${a.address}]:${port}`);
    }
  }
  return out.slice(0, MAX_CANDIDATES);
}

/** "198.51.100.7:51820" or "[2001:db8::1]:51820" as a native endpoint, or null. */
export function endpointBuffer(text: string): Buffer | null {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(text);
  const addr = m ? parseAddress(m[1]) : null;
  return addr ? makeEndpoint(addr, Number(m![2])) : null;
}

export interface FleetPathsOptions {
  daemon: Daemon;
  identity: Identity;
  join: JoinResult;
  iface: string;
  caFile?: string;
  log: PinoLogger;
}

/**
 * How the agent is reached: disco sealed with our key, the relay the registry offers, STUN and
 * port mapping on the WireGuard socket, and the candidate endpoints they yield.
 */
export class FleetPaths {
  private relay: RelayClient | null = null;
  private netcheck: Netcheck | null = null;
  private adhocNetcheck: Netcheck | null = null;
  private lastReport: NetcheckReport | null = null;
  /** The candidates last published ("host:port"). */
  candidates: string[] = [];

  constructor(private readonly opts: FleetPathsOptions) {}

  async start(): Promise<void> {
    const { daemon, identity, join, log } = this.opts;
    const sock = daemon.sock!;
    const relayInfo = join.relays?.[0];
    if (relayInfo) {
      this.relay = new RelayClient({
        relay: relayInfo, identity, caFile: this.opts.caFile, log,
        sendUdp: (buf, endpoint) => daemon.sendRaw(buf, endpoint),
        onPacket: (src, packet) => sock.onRelayedPacket(src, packet),
      });
    }
    sock.enablePaths(new DiscoCodec(identity.wgPrivateKey, identity.wgPublicKey), this.relay);
    this.relay?.start();
    // STUN answers go to whichever netcheck asked: the periodic one, or a one-off with other servers.
    sock.stunHandler = (buf, off, len, src, srcOff) =>
      (this.netcheck?.onResponse(buf, off, len, src, srcOff) ?? false) || (this.adhocNetcheck?.onResponse(buf, off, len, src, srcOff) ?? false);
    const servers = await this.resolveStunServers(join.stun ?? []);
    if (servers.length) this.netcheck = this.makeNetcheck(servers);
  }

  /** After a key rotation: disco sealed with the new key, and a relay session under it. */
  setIdentity(identity: Identity): void {
    this.opts.identity = identity;
    this.opts.daemon.sock!.enablePaths(new DiscoCodec(identity.wgPrivateKey, identity.wgPublicKey), this.relay);
    this.relay?.setIdentity(identity);
  }

  async stop(): Promise<void> {
    this.relay?.stop();
    // Give the port mapping back to the router rather than leave it open until it expires.
    const mapping = this.netcheck?.portMapping;
    if (mapping) await releaseUdpMapping(mapping, this.opts.daemon.status().listenPort).catch(() => {});
  }

  /** `mapPorts`: also ask the gateway for a port mapping (only the periodic check owns one). */
  private makeNetcheck(servers: Buffer[], mapPorts = true): Netcheck {
    const daemon = this.opts.daemon;
    const gateway = mapPorts ? defaultGateway() : null;
    return new Netcheck({ send: (buf, endpoint) => daemon.sendRaw(buf, endpoint), servers, gateway, localPort: daemon.status().listenPort });
  }

  /** "host:port" entries (names too: a registry is usually reached by name) to endpoints; unresolvable ones are skipped. */
  private async resolveStunServers(list: string[]): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for (const text of list) {
      const hp = parseHostPort(text);
      if (!hp) continue;
      try {
        out.push(await resolveEndpoint(hp.host, hp.port));
      } catch (e) {
        this.opts.log.warn({ server: text, err: (e as Error).message }, 'cannot resolve STUN server');
      }
    }
    return out;
  }

  /** The periodic netcheck, or with `servers` a one-off check against those STUN servers from the same socket. */
  async runNetcheck(params?: { servers?: unknown }): Promise<NetcheckReport> {
    if (Array.isArray(params?.servers) && params.servers.length) {
      const servers = await this.resolveStunServers(params.servers.map(String));
      if (!servers.length) throw new AgentVpnError('BAD_STUN_SERVER', `cannot use STUN servers ${params.servers.join(', ')}`, 'give HOST:PORT entries that resolve, e.g. --stun 203.0.113.2:3478');
      this.adhocNetcheck = this.makeNetcheck(servers, false);
      try {
        return await this.adhocNetcheck.run();
      } finally {
        this.adhocNetcheck = null;
      }
    }
    if (!this.netcheck) {
      throw new AgentVpnError('NO_STUN', 'the registry offers no STUN server', 'use a registry that runs its built-in relay and STUN (the default), or `agentvpn netcheck --stun HOST:PORT`');
    }
    this.lastReport = await this.netcheck.run();
    return this.lastReport;
  }

  /**
   * Our candidate endpoints: the port mapped on the NAT, the address STUN saw, and local
   * addresses (for agents behind the same NAT). True when they changed (republish the record).
   */
  async refreshEndpoints(): Promise<boolean> {
    if (this.netcheck) await this.runNetcheck().catch((e) => this.opts.log.warn({ err: (e as Error).message }, 'netcheck failed'));
    const daemon = this.opts.daemon;
    const r = this.lastReport;
    const list = [...new Set([
      ...(r?.portMapping ? [r.portMapping.external] : []),
      ...(r?.reflexive ? [r.reflexive] : []),
      ...localEndpoints(daemon.status().listenPort, this.opts.iface),
    ])].slice(0, MAX_CANDIDATES);
    daemon.sock!.setLocalCandidates(list.map(endpointBuffer).filter((e): e is Buffer => e !== null));
    const changed = list.join(' ') !== this.candidates.join(' ');
    this.candidates = list;
    return changed;
  }
}
