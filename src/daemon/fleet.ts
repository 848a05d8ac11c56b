import { existsSync, readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import { AgentVpnError } from '../errors.js';
import { Identity } from '../identity/identity.js';
import { formatAddress, formatPrefix, networkOf, parseAddress, parsePrefix, type Prefix } from '../ip/prefix.js';
import { overlayIPv6 } from '../identity/addresses.js';
import { RegistryClient, type AgentView, type JoinResult } from '../registry/client.js';
import { anyCapabilityMatches, formatCapability, parseCapability } from '../registry/capabilities.js';
import { RECORD_LIFETIME_MS, signRecord, verifyRecord, type AgentRecord } from '../registry/record.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { makeEndpoint } from '../wireguard/endpoint.js';
import { DnsServer } from '../dns/server.js';
import { DiscoCodec } from '../paths/disco.js';
import { defaultGateway } from '../paths/gateway.js';
import { Netcheck, parseHostPort, type NetcheckReport } from '../paths/netcheck.js';
import { releaseUdpMapping } from '../paths/natpmp.js';
import { RelayClient } from '../paths/relay-client.js';
import { Daemon, resolveEndpoint } from './daemon.js';

export interface FleetOptions {
  iface: string;
  registryUrl: string;
  token?: string;
  name: string;
  capabilities: string[];
  network: string;
  stateDir: string;
  listenPort: number;
  mtu: number;
  caFile?: string;
  /** Serve agent names over DNS on the overlay addresses (port 53). */
  dns: boolean;
  /** The daemon's nftables rules (default true; see Daemon). */
  firewall?: boolean;
  log: PinoLogger;
}

/** What `agentvpn peers` and `discover()` return for each agent. */
export interface PeerInfo {
  id: string;
  name: string;
  ipv4: string;
  ipv6: string;
  online: boolean;
  lastSeen: number;
  capabilities: string[];
  endpoints: string[];
}

/** Endpoint discovery (STUN, port mapping) is repeated this often: NAT mappings and addresses change. */
const NETCHECK_INTERVAL_MS = 60_000;
/** A re-signed record is published this long before the old one expires. */
const REPUBLISH_MARGIN_MS = RECORD_LIFETIME_MS / 4;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 30_000;

function inPrefix(address: string, prefix: Prefix): boolean {
  const a = parseAddress(address);
  return !!a && a.length === prefix.addr.length && formatPrefix(networkOf({ family: prefix.family, addr: a, bits: prefix.bits })) === formatPrefix(networkOf(prefix));
}

/** Underlay addresses worth publishing: not loopback, not link-local, not our own overlay. */
function localEndpoints(port: number, exclude: string): string[] {
  const out: string[] = [];
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (name === exclude) continue;
    for (const a of addrs ?? []) {
      if (a.internal || (a.family === 'IPv6' && a.address.toLowerCase().startsWith('fe80'))) continue;
      out.push(a.family === 'IPv4' ? `${a.address}:${port}` : `[${a.address}]:${port}`);
    }
  }
  return out.slice(0, 16);
}

function endpointBuffer(text: string): Buffer | null {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(text);
  const addr = m ? parseAddress(m[1]) : null;
  return addr ? makeEndpoint(addr, Number(m![2])) : null;
}

/**
 * Registry mode: the agent's identity, join, its signed record, heartbeats, and the fleet view
 * that becomes WireGuard peers, DNS names and discovery answers. When the registry is
 * unreachable, everything already configured keeps working and the agent keeps retrying.
 */
export class FleetAgent {
  readonly identity: Identity;
  private readonly client: RegistryClient;
  private join: JoinResult | null = null;
  private daemon: Daemon | null = null;
  private dns: DnsServer | null = null;
  private relay: RelayClient | null = null;
  private netcheck: Netcheck | null = null;
  private adhocNetcheck: Netcheck | null = null;
  private lastReport: NetcheckReport | null = null;
  private endpoints: string[] = [];
  private readonly agents = new Map<string, AgentView>();
  private watcher: { close(): void } | null = null;
  private timers: NodeJS.Timeout[] = [];
  private seq = 0;
  private publishedAt = 0;
  private registryUp = false;
  private pool: Prefix | null = null;
  private publishing: Promise<void> | null = null;
  private stopped = false;

  constructor(private readonly opts: FleetOptions) {
    this.identity = Identity.loadOrCreate(opts.stateDir);
    this.client = new RegistryClient({ url: opts.registryUrl, identity: this.identity, network: opts.network, caFile: opts.caFile });
    for (const c of opts.capabilities) parseCapability(c); // fail early on a bad --cap
  }

  private get cacheFile(): string {
    return join(this.opts.stateDir, `join-${this.opts.network}.json`);
  }

  /** Joins the network (or, with the registry down, reuses the last join: addresses are permanent). */
  private async joinNetwork(): Promise<JoinResult> {
    try {
      const result = await this.client.join(this.opts.name, this.opts.token);
      writeFileAtomic(this.cacheFile, JSON.stringify(result));
      return result;
    } catch (e) {
      if (e instanceof AgentVpnError && e.code === 'REGISTRY_UNREACHABLE' && existsSync(this.cacheFile)) {
        this.opts.log.warn({ err: e.message }, 'registry unreachable; starting with the addresses of the last join');
        return JSON.parse(readFileSync(this.cacheFile, 'utf8')) as JoinResult;
      }
      throw e;
    }
  }

  /** Refuses a join answer that would route more than the overlay into the tunnel. */
  private checkJoin(join: JoinResult): { pool: Prefix; ula: Prefix } {
    const pool = parsePrefix(join.pool);
    const ula = parsePrefix(join.ulaPrefix);
    const ok = pool && pool.family === 4 && pool.bits >= 8 && pool.bits <= 30 && ula && ula.family === 6 && ula.bits === 48 && ula.addr[0] === 0xfd
      && inPrefix(join.ipv4, pool) && formatAddress(parseAddress(join.ipv6) ?? new Uint8Array(16)) === formatAddress(overlayIPv6(join.network, this.identity.publicKey));
    if (!ok) {
      throw new AgentVpnError('BAD_JOIN', `the registry answered the join with unusable addresses (pool ${join.pool}, ipv4 ${join.ipv4}, ula ${join.ulaPrefix})`,
        'the registry must use an IPv4 pool between /8 and /30 and a fd00::/8 /48; check its --pool');
    }
    return { pool: pool!, ula: ula! };
  }

  async start(): Promise<Daemon> {
    try {
      return await this.startUp();
    } catch (e) {
      await this.stop().catch(() => {}); // nothing half-started stays behind
      throw e;
    }
  }

  private async startUp(): Promise<Daemon> {
    const { opts } = this;
    const join = await this.joinNetwork();
    this.join = join;
    const { pool, ula } = this.checkJoin(join);
    this.pool = pool;
    const addresses: Prefix[] = [
      { ...parsePrefix(join.ipv4)!, bits: pool.bits },
      { ...parsePrefix(join.ipv6)!, bits: ula.bits },
    ];
    const daemon = new Daemon({
      iface: opts.iface,
      log: opts.log,
      firewall: opts.firewall,
      config: { privateKey: this.identity.wgPrivateKey, addresses, listenPort: opts.listenPort, mtu: opts.mtu, peers: [] },
      handlers: {
        id: () => this.describeSelf(),
        peers: (params) => this.peers((params as { cap?: string } | undefined)?.cap),
        resolve: (params) => this.resolve(String((params as { name?: unknown } | undefined)?.name ?? '')),
        ping: (params) => this.ping(params as { name?: unknown; count?: unknown } | undefined),
        netcheck: (params) => this.runNetcheck(params as { servers?: unknown } | undefined),
      },
    });
    this.daemon = daemon;
    await daemon.start();
    await this.startPaths(daemon, join);
    await this.refreshEndpoints();
    if (opts.dns) {
      this.dns = new DnsServer({ bind: [join.ipv4, join.ipv6], zone: join.network, lookup: (name) => this.lookupName(name) });
      await this.dns.start();
    }
    this.watch();
    const heartbeatMs = Math.min(Math.max(join.heartbeatIntervalMs, 1000), 600_000);
    this.timers.push(setInterval(() => void this.heartbeat(), heartbeatMs));
    this.timers.push(setInterval(() => void this.refreshEndpoints(), NETCHECK_INTERVAL_MS));
    return daemon;
  }

  /** Disco sealed with our key, the relay (if the registry offers one) and STUN on the WireGuard socket. */
  private async startPaths(daemon: Daemon, join: JoinResult): Promise<void> {
    const sock = daemon.sock!;
    const relayInfo = join.relays?.[0];
    if (relayInfo) {
      this.relay = new RelayClient({
        relay: relayInfo, identity: this.identity, caFile: this.opts.caFile, log: this.opts.log,
        sendUdp: (buf, endpoint) => daemon.sendRaw(buf, endpoint),
        onPacket: (src, packet) => sock.onRelayedPacket(src, packet),
      });
    }
    sock.enablePaths(new DiscoCodec(this.identity.wgPrivateKey, this.identity.wgPublicKey), this.relay);
    this.relay?.start();
    // STUN answers go to whichever netcheck asked: the periodic one, or a one-off with other servers.
    sock.stunHandler = (buf, off, len, src, srcOff) =>
      (this.netcheck?.onResponse(buf, off, len, src, srcOff) ?? false) || (this.adhocNetcheck?.onResponse(buf, off, len, src, srcOff) ?? false);
    const servers = await this.resolveStunServers(join.stun ?? []);
    if (servers.length) this.netcheck = this.makeNetcheck(servers);
  }

  /** `mapPorts`: also ask the gateway for a port mapping (only the periodic check owns one). */
  private makeNetcheck(servers: Buffer[], mapPorts = true): Netcheck {
    const daemon = this.daemon!;
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
  private async runNetcheck(params?: { servers?: unknown }): Promise<NetcheckReport> {
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
   * addresses (for agents behind the same NAT). Republished when they change.
   */
  private async refreshEndpoints(): Promise<void> {
    if (this.netcheck) await this.runNetcheck().catch((e) => this.opts.log.warn({ err: (e as Error).message }, 'netcheck failed'));
    const port = this.daemon!.status().listenPort;
    const r = this.lastReport;
    const list = [...new Set([
      ...(r?.portMapping ? [r.portMapping.external] : []),
      ...(r?.reflexive ? [r.reflexive] : []),
      ...localEndpoints(port, this.opts.iface),
    ])].slice(0, 16);
    this.daemon!.sock!.setLocalCandidates(list.map(endpointBuffer).filter((e): e is Buffer => e !== null));
    const changed = list.join(' ') !== this.endpoints.join(' ');
    this.endpoints = list;
    if (changed && this.publishedAt > 0) await this.publish();
  }

  /** Follows the fleet over the registry's event stream (the client reconnects with backoff). */
  private watch(): void {
    const { opts } = this;
    this.watcher?.close();
    this.watcher = this.client.watch({
      snapshot: (agents) => { for (const a of agents) this.applySafely(a); },
      change: (_kind, agent) => this.applySafely(agent),
      connected: () => {
        if (!this.registryUp) opts.log.info({}, 'registry connected');
        this.registryUp = true;
        void this.publish(); // the registry may have restarted: make sure it has our record
      },
      disconnected: (err) => {
        if (this.registryUp) opts.log.warn({ err: err.message }, 'registry unreachable; tunnels keep working, retrying');
        this.registryUp = false;
      },
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    this.watcher?.close();
    this.relay?.stop();
    // Give the port mapping back to the router rather than leave it open until it expires.
    const mapping = this.netcheck?.portMapping;
    if (mapping) await releaseUdpMapping(mapping, this.daemon!.status().listenPort).catch(() => {});
    await this.client.leave().catch(() => {});
    await this.dns?.stop();
    await this.daemon?.stop();
  }

  private buildRecord(): AgentRecord {
    const join = this.join!;
    const now = Date.now();
    this.seq = Math.max(now, this.seq + 1); // grows across restarts too
    return {
      v: 1, network: join.network, id: this.identity.id, name: this.opts.name,
      wgPublicKey: Buffer.from(this.identity.wgPublicKey).toString('base64'),
      ipv4: join.ipv4, ipv6: join.ipv6,
      endpoints: this.endpoints.length ? this.endpoints : localEndpoints(this.daemon!.status().listenPort, this.opts.iface),
      capabilities: this.opts.capabilities.map((c) => formatCapability(parseCapability(c))),
      seq: this.seq, issuedAt: now, expiresAt: now + RECORD_LIFETIME_MS,
    };
  }

  /** Publishes a fresh signed record, retrying with backoff until the registry takes it; one loop at a time. */
  private publish(): Promise<void> {
    this.publishing ??= (async () => {
      for (let delay = RETRY_MIN_MS; !this.stopped; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
        try {
          await this.client.publish(signRecord(this.identity, this.buildRecord()));
          this.publishedAt = Date.now();
          return;
        } catch (e) {
          this.opts.log.warn({ err: (e as Error).message, retryInMs: delay }, 'publishing our record failed; will retry');
          await new Promise((r) => setTimeout(r, delay).unref());
        }
      }
    })().finally(() => (this.publishing = null));
    return this.publishing;
  }

  private async heartbeat(): Promise<void> {
    try {
      if (Date.now() - this.publishedAt > RECORD_LIFETIME_MS - REPUBLISH_MARGIN_MS) await this.publish();
      else await this.client.heartbeat();
      // The registry answers again but the event stream is still in its backoff: reconnect now.
      if (!this.registryUp) this.watch();
    } catch (e) {
      const code = e instanceof AgentVpnError ? e.code : '';
      // A registry that lost our record (restored from an older backup, say) gets it again.
      if (code === 'NOT_FOUND' || code === 'NOT_JOINED') {
        await this.client.join(this.opts.name, this.opts.token).catch(() => {});
        await this.publish();
      }
    }
  }

  /** Whatever the registry sends, a bad entry is logged and skipped, never fatal. */
  private applySafely(view: AgentView): void {
    this.apply(view).catch((e) => this.opts.log.error({ err: (e as Error).message }, 'ignoring agent entry that cannot be applied'));
  }

  /** Believes an agent only if its record verifies; then makes it a WireGuard peer. */
  private async apply(view: AgentView): Promise<void> {
    const r = view?.record;
    if (!r || r.id === this.identity.id) return;
    const check = verifyRecord(view, { network: this.join!.network });
    if (!check.ok) {
      this.opts.log.warn({ id: r.id, problem: check.problem, detail: check.detail }, 'ignoring agent record that does not verify');
      return;
    }
    // The IPv4 is not bound to the key like the IPv6: make sure it is inside the overlay pool and
    // not another agent's, so a misbehaving registry cannot redirect traffic or add host routes.
    const holder = [...this.agents.values()].find((a) => a.record.ipv4 === r.ipv4 && a.record.id !== r.id);
    if (!inPrefix(r.ipv4, this.pool!) || r.ipv4 === this.join!.ipv4 || holder) {
      this.opts.log.warn({ id: r.id, ipv4: r.ipv4 }, 'ignoring agent record whose IPv4 is outside the pool or taken');
      return;
    }
    const known = this.agents.get(r.id);
    if (known && known.record.seq > r.seq) return;
    this.agents.set(r.id, view);
    const wgKey = Buffer.from(r.wgPublicKey, 'base64');
    const candidates = r.endpoints.map(endpointBuffer).filter((e): e is Buffer => e !== null);
    const endpoint = this.daemon?.sock?.upsertPeer(wgKey, candidates) ?? null;
    await this.daemon?.upsertPeer({
      publicKey: wgKey,
      allowedIps: [parsePrefix(r.ipv4)!, parsePrefix(r.ipv6)!],
      endpoint,
      roaming: false,
    }).catch((e) => this.opts.log.error({ err: e, id: r.id }, 'configuring peer failed'));
  }

  private describeSelf() {
    const join = this.join!;
    return {
      id: this.identity.id, name: this.opts.name, network: join.network, ipv4: join.ipv4, ipv6: join.ipv6,
      wgPublicKey: Buffer.from(this.identity.wgPublicKey).toString('base64'),
      capabilities: this.opts.capabilities, registry: this.opts.registryUrl, registryConnected: this.registryUp,
    };
  }

  peers(cap?: string): PeerInfo[] {
    const query = cap ? parseCapability(cap) : null;
    return [...this.agents.values()]
      .filter((a) => !query || anyCapabilityMatches(query, a.record.capabilities))
      .map((a) => ({
        id: a.record.id, name: a.record.name, ipv4: a.record.ipv4, ipv6: a.record.ipv6, online: a.online,
        lastSeen: a.lastSeen, capabilities: a.record.capabilities, endpoints: a.record.endpoints,
      }))
      .sort((x, y) => x.name.localeCompare(y.name));
  }

  /** Disco pings to an agent over its current path, each reply with the path it took. */
  private async ping(params: { name?: unknown; count?: unknown } | undefined) {
    const name = String(params?.name ?? '');
    const count = Math.min(Math.max(Number(params?.count ?? 4) || 4, 1), 100);
    const target = this.findAgent(name);
    const replies = await this.daemon!.sock!.ping(Buffer.from(target.record.wgPublicKey, 'base64'), count);
    return { name: target.record.name, ipv4: target.record.ipv4, replies };
  }

  /** "worker", "worker.prod" and "worker.prod." all name the agent worker. */
  private bareName(name: string): string {
    const lower = name.toLowerCase().replace(/\.$/, '');
    const suffix = `.${this.join!.network}`;
    return lower.endsWith(suffix) ? lower.slice(0, -suffix.length) : lower;
  }

  private findAgent(name: string): AgentView {
    const bare = this.bareName(name);
    for (const a of this.agents.values()) if (a.record.name === bare || a.record.ipv4 === bare || a.record.id === bare) return a;
    throw new AgentVpnError('NAME_NOT_FOUND', `no agent named "${name}" in network ${this.join!.network}`, 'list the agents with `agentvpn peers`');
  }

  /** `name` or `name.<network>`; our own name resolves too. */
  private lookupName(name: string): { ipv4: string; ipv6: string } | null {
    const bare = this.bareName(name);
    if (bare === this.opts.name) return { ipv4: this.join!.ipv4, ipv6: this.join!.ipv6 };
    for (const a of this.agents.values()) if (a.record.name === bare) return { ipv4: a.record.ipv4, ipv6: a.record.ipv6 };
    return null;
  }

  resolve(name: string): { name: string; ipv4: string; ipv6: string } {
    const hit = this.lookupName(name);
    if (!hit) {
      throw new AgentVpnError('NAME_NOT_FOUND', `no agent named "${name}" in network ${this.join!.network}`, 'list the agents with `agentvpn peers`');
    }
    return { name, ipv4: formatAddress(parseAddress(hit.ipv4)!), ipv6: formatAddress(parseAddress(hit.ipv6)!) };
  }
}
