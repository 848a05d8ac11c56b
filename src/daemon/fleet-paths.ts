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
import { relayChoice, paths as pathTiming } from '../paths/constants.js';
import { HomeChoice, RelayHealth, isAlive } from '../paths/relay-choice.js';
import { RelayLinks } from '../paths/relay-links.js';
import { RelayProber, type ProbedRelay } from '../paths/relay-probe.js';
import { NAME_PATTERN } from '../net/names.js';
import { RelayClient, type RelayInfo } from '../relay/client.js';
import { parseHostPort as parseRelayHostPort } from '../relay/protocol.js';
import { resolveEndpoint, type Daemon } from './daemon.js';

/** Candidate endpoints we publish, at most (the record's cap). */
const MAX_CANDIDATES = 16;
/** At start, wait this long at most for the relays' first answers before choosing a home (they come in one RTT). */
const FIRST_CHOICE_WAIT_MS = 1_000;

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
  /** Our home relay changed (publish a record naming it). */
  onHomeRelayChange?: () => void;
}

/** A relay the registry advertises, as we use it. */
interface Advertised {
  info: RelayInfo;
  name: string;
  region: string | null;
}

/**
 * How the agent is reached: disco sealed with our key, the relays the registry offers (a home
 * relay chosen by RTT, and links to peers' home relays), STUN and port mapping on the WireGuard
 * socket, and the candidate endpoints they yield.
 */
export class FleetPaths {
  private advertised: Advertised[] = [];
  private links: RelayLinks<RelayClient> | null = null;
  private prober: RelayProber | null = null;
  private relayTimer: NodeJS.Timeout | null = null;
  /** Relays that refuse us though they answer STUN. */
  private readonly health = new RelayHealth();
  private readonly choice = new HomeChoice();
  private netcheck: Netcheck | null = null;
  private adhocNetcheck: Netcheck | null = null;
  private lastReport: NetcheckReport | null = null;
  /** The candidates last published ("host:port"). */
  candidates: string[] = [];

  constructor(private readonly opts: FleetPathsOptions) {}

  async start(): Promise<void> {
    const { daemon, identity, join, log } = this.opts;
    const sock = daemon.sock!;
    this.advertised = this.advertisedRelays(join.relays ?? []);
    const byName = new Map(this.advertised.map((a) => [a.name, a.info]));
    if (this.advertised.length) {
      this.links = new RelayLinks(new Set(byName.keys()), (name) => new RelayClient({
        relay: byName.get(name)!, identity: this.opts.identity, caFile: this.opts.caFile, log,
        sendUdp: (buf, endpoint) => daemon.sendRaw(buf, endpoint),
        onPacket: (src, packet) => sock.onRelayedPacket(src, packet),
      }));
    }
    sock.enablePaths(new DiscoCodec(identity.wgPrivateKey, identity.wgPublicKey), this.links);
    // STUN answers go to whichever asked: the relay prober, the periodic netcheck, or a one-off with other servers.
    sock.stunHandler = (buf, off, len, src, srcOff) => (this.prober?.onResponse(buf, off, len, src, srcOff) ?? false) ||
      (this.netcheck?.onResponse(buf, off, len, src, srcOff) ?? false) || (this.adhocNetcheck?.onResponse(buf, off, len, src, srcOff) ?? false);
    if (this.links) await this.startRelayChoice();
    // Without the registry's own STUN (--no-relay), the advertised relays answer STUN on their ports too.
    const servers = await this.resolveStunServers(join.stun?.length ? join.stun : this.advertised.map((a) => a.info.udp));
    if (servers.length) this.netcheck = this.makeNetcheck(servers);
  }

  /** After a key rotation: disco sealed with the new key, and relay sessions under it. */
  setIdentity(identity: Identity): void {
    this.opts.identity = identity;
    this.opts.daemon.sock!.enablePaths(new DiscoCodec(identity.wgPrivateKey, identity.wgPublicKey), this.links);
    for (const [, link] of this.links?.links() ?? []) link.setIdentity(identity);
  }

  /** Our home relay's name as the record names it (null: none, or an older registry's unnamed relay). */
  get homeRelay(): string | null {
    const home = this.links?.homeRelay ?? null;
    return home !== null && NAME_PATTERN.test(home) ? home : null;
  }

  /** Each advertised relay: its region, smoothed RTT, whether it answers, whether it is home, our link's state. */
  relays(): { name: string; region: string | null; rttMs: number | null; alive: boolean; home: boolean; link: string | null }[] {
    const now = Date.now();
    const home = this.links?.homeRelay ?? null;
    return this.advertised.map((a) => {
      const m = this.prober?.all.find((p) => p.name === a.name); // none: its address did not resolve
      return {
        name: a.name, region: a.region, rttMs: m?.rttMs == null ? null : Math.round(m.rttMs * 100) / 100,
        alive: m ? isAlive(m, now, a.name === home) : false, home: a.name === home, link: this.links?.linkOf(a.name)?.state ?? null,
      };
    });
  }

  async stop(): Promise<void> {
    if (this.relayTimer) clearInterval(this.relayTimer);
    this.relayTimer = null;
    this.links?.stop();
    // Give the port mapping back to the router rather than leave it open until it expires.
    const mapping = this.netcheck?.portMapping;
    if (mapping) await releaseUdpMapping(mapping, this.opts.daemon.status().listenPort).catch(() => {});
  }

  /** The join's relays we use: named (older registries: by address), the first of a name, at most maxAdvertised. */
  private advertisedRelays(list: RelayInfo[]): Advertised[] {
    const out: Advertised[] = [];
    for (const info of list) {
      const name = info.name ?? info.udp;
      if (out.length >= relayChoice.maxAdvertised || out.some((a) => a.name === name)) continue;
      out.push({ info, name, region: info.region ?? null });
    }
    return out;
  }

  /**
   * Probes every relay, takes the nearest that answers within FIRST_CHOICE_WAIT_MS as home (the
   * first listed when none does), then keeps choosing on a timer: a dead home is left within
   * deadAfterMs, a clearly nearer relay is moved to (hysteresis), idle peers' links are closed.
   */
  private async startRelayChoice(): Promise<void> {
    const probed: ProbedRelay[] = [];
    for (const a of this.advertised) {
      try {
        const { host, port } = parseRelayHostPort(a.info.udp, 'relay address');
        probed.push({ name: a.name, endpoint: await resolveEndpoint(host, port) });
      } catch (e) {
        this.opts.log.warn({ relay: a.name, err: (e as Error).message }, 'cannot resolve relay; not measured');
      }
    }
    const prober = new RelayProber(probed, (buf, endpoint) => this.opts.daemon.sendRaw(buf, endpoint));
    this.prober = prober;
    prober.tick(Date.now(), null);
    const deadline = Date.now() + FIRST_CHOICE_WAIT_MS;
    while (Date.now() < deadline && !prober.all.every((m) => m.rttMs !== null)) await new Promise((r) => setTimeout(r, 20));
    this.chooseHome(Date.now(), 'start');
    this.relayTimer = setInterval(() => {
      const now = Date.now();
      prober.tick(now, this.links?.homeRelay ?? null);
      this.chooseHome(now, 'tick');
      this.links?.closeIdle(now);
    }, pathTiming.tickMs);
    this.relayTimer.unref();
  }

  /** Runs the choice over the probes' measures, with relays that refuse us set aside (RelayHealth). */
  private chooseHome(now: number, when: 'start' | 'tick'): void {
    const links = this.links!;
    const before = links.homeRelay;
    for (const a of this.advertised) this.health.observe(a.name, links.linkOf(a.name)?.state === 'down', now);
    const measures = this.health.adjust(this.advertised.map((a) => this.prober?.all.find((p) => p.name === a.name) ?? { name: a.name, rttMs: null, lastAnswerAt: -Infinity }), before, now);
    const next = this.choice.next(measures, before, now);
    if (next === null || next === before || !links.setHome(next, now)) return;
    const from = measures.find((m) => m.name === before);
    const reason = when === 'start' ? 'nearest at start' : from && !isAlive(from, now, true) ? 'home relay stopped answering' : 'another relay is clearly nearer';
    this.opts.log.info({ event: 'home-relay', from: before, to: next, reason, rttMs: measures.find((m) => m.name === next)?.rttMs ?? null }, `home relay ${next} (${reason})`);
    if (when === 'tick') this.opts.onHomeRelayChange?.();
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
  async runNetcheck(params?: { servers?: unknown }): Promise<NetcheckReport & { relays?: ReturnType<FleetPaths['relays']> }> {
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
    return { ...this.lastReport, relays: this.relays() };
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
    daemon.sock!.setNat(r?.mappingVariesByDestination ?? null, r?.reflexive ? endpointBuffer(r.reflexive) : null); // birthday probing's roles
    const changed = list.join(' ') !== this.candidates.join(' ');
    this.candidates = list;
    return changed;
  }
}
