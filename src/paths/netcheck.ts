/**
 * What `agentvpn netcheck` reports about the network an agent sits in: can it send UDP, which
 * address and port the outside world sees (STUN-reflexive), whether that mapping changes with
 * the destination (a "hard", symmetric NAT, where a peer cannot use the address STUN saw), and
 * whether the gateway offers port mapping (PCP / NAT-PMP, else UPnP-IGD).
 *
 * The daemon runs it over its shared WireGuard socket (so the reflexive port is the one peers
 * must use): Netcheck sends through a callback and the socket layer hands STUN responses to
 * onResponse(). `netcheckStandalone()` does the same over a socket of its own, for the CLI when
 * no daemon runs.
 */
import { createSocket, type RemoteInfo } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { isIP, isIPv4 } from 'node:net';
import { performance } from 'node:perf_hooks';
import { AgentVpnError } from '../errors.js';
import { formatAddress, parseAddress } from '../ip/prefix.js';
import { endpointAddress, endpointPort, formatEndpoint, makeEndpoint } from '../net/endpoint.js';
import { defaultGatewayV4 } from './gateway.js';
import { DEFAULT_PORTMAP_TIMEOUT_MS, formatMappingEndpoint, releaseUdpMapping, requestUdpMapping } from './natpmp.js';
import type { PortMapping } from './port-mapping.js';
import { DEFAULT_UPNP_TIMEOUT_MS, requestUpnpMapping } from './upnp.js';
import { buildBindingRequest, newTransactionId, parseBindingResponse, STUN_DEFAULT_PORT } from '../net/stun.js';

/** Whole-run budget: STUN servers are one RTT away (tens of ms across the internet); 3 s leaves room for loss and retries. */
export const DEFAULT_NETCHECK_TIMEOUT_MS = 3000;
/**
 * Retransmission schedule of each STUN probe: RFC 5389 §7.2.1 starts at RTO 500 ms and doubles;
 * within a 3 s run that is tries at 0, 0.5 and 1.5 s. Each try has its own transaction ID, so a
 * late answer to an earlier try still gives a true RTT.
 */
export const STUN_FIRST_RETRY_MS = 500;

export interface NetcheckReport {
  /** Some STUN server answered: UDP gets out. */
  udp: boolean;
  /** Our address and port as the first answering server saw them ("ip:port", IPv6 in brackets). */
  reflexive: string | null;
  /** True when two server endpoints saw different addresses or ports (symmetric / hard NAT); null with fewer than two answers. */
  mappingVariesByDestination: boolean | null;
  /** The port mapping the gateway granted, if any. */
  portMapping: { protocol: string; external: string } | null;
  /** Every server endpoint asked ("ip:port"). */
  stunServers: string[];
  /** Round-trip time per answering server, in milliseconds. */
  latencyMs: Record<string, number>;
}

export interface NetcheckOptions {
  /** Sends a datagram to a 20-byte endpoint through the caller's UDP socket. */
  send(buf: Buffer, endpoint: Buffer): void;
  /** STUN server endpoints (20-byte form). Hard-NAT detection needs two: one host on two ports, or two hosts. */
  servers: Buffer[];
  /** Gateway to ask for a port mapping; null or absent: do not ask. */
  gateway?: string | null;
  /** Local UDP port of the socket `send` uses (the internal port of a port mapping). */
  localPort: number;
  timeoutMs?: number;
  /**
   * How to request the mapping; default requestUdpMapping(). `held` is the mapping of the
   * previous run on the same gateway (renew it: PCP needs its nonce). Tests may replace it.
   */
  mapPort?: (gateway: string, internalPort: number, timeoutMs: number, held: PortMapping | null) => Promise<PortMapping | null>;
}

interface ServerState {
  endpoint: Buffer;
  label: string;
  rttMs: number | null;
  reflexive: Buffer | null;
}

/** How many past runs' transaction IDs still count as ours (late answers are claimed, not misrouted). */
const REMEMBERED_RUNS = 2;

export class Netcheck {
  private readonly servers: ServerState[];
  /** Transaction ID (hex) → server index and send time, for the current run. */
  private pending = new Map<string, { server: number; sentAt: number }>();
  private readonly earlierRuns: Map<string, unknown>[] = [];
  private running: Promise<NetcheckReport> | null = null;
  private wake: (() => void) | null = null;
  private mapping: PortMapping | null = null;

  constructor(private readonly opts: NetcheckOptions) {
    this.servers = opts.servers.map((endpoint) => ({ endpoint: Buffer.from(endpoint), label: formatEndpoint(endpoint), rttMs: null, reflexive: null }));
  }

  /** The mapping the last run obtained (the daemon keeps it as a candidate, renews and releases it). */
  get portMapping(): PortMapping | null {
    return this.mapping;
  }

  /** Probes every server (and the gateway); concurrent calls share one run. */
  run(): Promise<NetcheckReport> {
    this.running ??= this.doRun().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /**
   * Hands a STUN message that arrived on the socket to the running check. Returns true when it
   * answers one of our probes (of this run or a recent one), false when it is not ours.
   */
  onResponse(buf: Uint8Array, off: number, len: number, _src: Buffer, _srcOff: number): boolean {
    const r = parseBindingResponse(buf, off, len);
    if (!r) return false;
    const key = r.txid.toString('hex');
    const probe = this.pending.get(key);
    if (!probe) return this.earlierRuns.some((m) => m.has(key));
    const s = this.servers[probe.server]!;
    const rtt = performance.now() - probe.sentAt;
    if (s.rttMs === null || rtt < s.rttMs) s.rttMs = rtt;
    s.reflexive ??= makeEndpoint(r.address, r.port);
    if (this.servers.every((x) => x.reflexive !== null)) this.wake?.();
    return true;
  }

  private probe(server: number): void {
    const txid = newTransactionId();
    this.pending.set(txid.toString('hex'), { server, sentAt: performance.now() });
    try {
      this.opts.send(buildBindingRequest(txid), this.servers[server]!.endpoint);
    } catch {
      // An unroutable server is just one that never answers.
    }
  }

  private async doRun(): Promise<NetcheckReport> {
    const timeoutMs = this.opts.timeoutMs ?? DEFAULT_NETCHECK_TIMEOUT_MS;
    const deadline = performance.now() + timeoutMs;
    if (this.pending.size > 0) this.earlierRuns.unshift(this.pending);
    this.earlierRuns.length = Math.min(this.earlierRuns.length, REMEMBERED_RUNS);
    this.pending = new Map();
    for (const s of this.servers) {
      s.rttMs = null;
      s.reflexive = null;
    }

    const gateway = this.opts.gateway;
    // Renewing our own PCP mapping must carry its nonce, or the server refuses it.
    const held = this.mapping?.gateway === gateway ? this.mapping : null;
    const mapPort = this.opts.mapPort ?? mapUdpPort;
    const mappingDone = gateway
      ? mapPort(gateway, this.opts.localPort, Math.min(timeoutMs, DEFAULT_PORTMAP_TIMEOUT_MS), held).catch(() => null)
      : Promise.resolve(null);

    const stunDone = new Promise<void>((resolve) => {
      if (this.servers.length === 0) return resolve();
      let delay = STUN_FIRST_RETRY_MS;
      let timer: NodeJS.Timeout | undefined;
      const finish = (): void => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
      this.wake = finish;
      const round = (): void => {
        this.servers.forEach((s, i) => {
          if (s.reflexive === null) this.probe(i);
        });
        const left = deadline - performance.now();
        if (left <= 0) return finish();
        timer = setTimeout(() => (performance.now() >= deadline ? finish() : round()), Math.min(delay, left));
        delay *= 2;
      };
      round();
    });

    const [mapping] = await Promise.all([mappingDone, stunDone]);
    this.mapping = mapping;
    return this.report();
  }

  private report(): NetcheckReport {
    const answered = this.servers.filter((s) => s.reflexive !== null);
    const first = answered[0]?.reflexive ?? null;
    // Compare only mappings of the same address family as the first one (a v4 and a v6 server
    // necessarily see different addresses), and only between distinct server endpoints.
    const firstIsV4 = first !== null && endpointAddress(first).length === 4;
    const sameFamily = answered.filter((s) => (endpointAddress(s.reflexive!).length === 4) === firstIsV4);
    const distinct = new Set(sameFamily.map((s) => s.label));
    let varies: boolean | null = null;
    if (distinct.size >= 2) {
      varies = sameFamily.some((s) => !s.reflexive!.subarray(0, 18).equals(first!.subarray(0, 18)));
    }
    const latencyMs: Record<string, number> = {};
    for (const s of answered) latencyMs[s.label] = Math.round(s.rttMs! * 100) / 100;
    return {
      udp: answered.length > 0,
      reflexive: first ? formatEndpoint(first) : null,
      mappingVariesByDestination: varies,
      portMapping: this.mapping ? { protocol: this.mapping.protocol, external: formatMappingEndpoint(this.mapping) } : null,
      stunServers: [...new Set(this.servers.map((s) => s.label))],
      latencyMs,
    };
  }
}

/**
 * The default port mapping: PCP / NAT-PMP first (RFC 6887 §9), UPnP-IGD when neither answers. A
 * mapping held over UPnP is renewed there directly (a UPnP-only gateway would only make PCP wait).
 */
async function mapUdpPort(gateway: string, internalPort: number, timeoutMs: number, held: PortMapping | null): Promise<PortMapping | null> {
  if (held?.protocol !== 'upnp') {
    const m = await requestUdpMapping({ gateway, internalPort, timeoutMs, nonce: held?.nonce });
    if (m) return m;
  }
  return requestUpnpMapping({ gateway, internalPort, timeoutMs: DEFAULT_UPNP_TIMEOUT_MS, held });
}

/** "host:port", "[v6]:port" or a bare host (port 3478) → host and port; null when malformed. */
export function parseHostPort(text: string): { host: string; port: number } | null {
  let host: string;
  let portText: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (bracket) {
    host = bracket[1]!;
    portText = bracket[2];
  } else if ((text.match(/:/g) ?? []).length > 1) {
    host = text; // a bare IPv6 address
  } else {
    const i = text.lastIndexOf(':');
    host = i >= 0 ? text.slice(0, i) : text;
    portText = i >= 0 ? text.slice(i + 1) : undefined;
  }
  const port = portText === undefined ? STUN_DEFAULT_PORT : /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!host || !Number.isInteger(port) || port < 1 || port > 65535) return null;
  if (!isIP(host) && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)) return null;
  return { host, port };
}

export interface StandaloneOptions {
  /** STUN servers as host:port (IPv4 addresses or names that resolve to IPv4). */
  servers: string[];
  /** Gateway to ask for a port mapping: undefined = the default route's gateway, null = do not ask. */
  gateway?: string | null;
  timeoutMs?: number;
  /** Local address to bind the probe socket to (default any). */
  bindAddress?: string;
}

/** Resolves the servers to IPv4 endpoints, failing with a clear AgentVpnError on the first bad one. */
async function resolveServers(servers: string[]): Promise<Buffer[]> {
  if (servers.length === 0) {
    throw new AgentVpnError('NETCHECK_NO_SERVERS', 'no STUN server to ask', 'pass one or more with --stun HOST:PORT (two ports or two hosts also detect a hard NAT)');
  }
  const out: Buffer[] = [];
  for (const text of servers) {
    const hp = parseHostPort(text);
    if (!hp) throw new AgentVpnError('NETCHECK_BAD_SERVER', `bad STUN server "${text}"`, 'write it as HOST:PORT, e.g. 198.51.100.1:3478');
    let addr = hp.host;
    if (!isIPv4(addr)) {
      if (isIP(addr)) throw new AgentVpnError('NETCHECK_BAD_SERVER', `STUN server ${text} is IPv6; netcheck without a daemon probes over IPv4`, 'give an IPv4 address or a name with an A record');
      try {
        addr = (await lookup(hp.host, { family: 4 })).address;
      } catch (e) {
        throw new AgentVpnError('NETCHECK_BAD_SERVER', `cannot resolve STUN server ${hp.host}`, 'check the name, or give an IPv4 address', { cause: e });
      }
    }
    out.push(makeEndpoint(parseAddress(addr)!, hp.port));
  }
  return out;
}

/**
 * Runs a netcheck over a udp4 socket of its own (for the CLI when no daemon runs). A port
 * mapping it obtains is for that temporary socket, so it is released before returning.
 */
export async function netcheckStandalone(opts: StandaloneOptions): Promise<NetcheckReport> {
  const servers = await resolveServers(opts.servers);
  const gateway = opts.gateway === undefined ? defaultGatewayV4() : opts.gateway;
  const sock = createSocket('udp4');
  sock.on('error', () => {}); // ICMP errors from unreachable servers: those servers just do not answer
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, opts.bindAddress, () => {
        sock.off('error', reject);
        resolve();
      });
    });
  } catch (e) {
    sock.close();
    throw new AgentVpnError('NETCHECK_SOCKET', `cannot open a UDP socket: ${(e as Error).message}`, 'check --bind / local networking', { cause: e });
  }
  const localPort = sock.address().port;
  const nc = new Netcheck({
    servers,
    gateway,
    localPort,
    timeoutMs: opts.timeoutMs,
    send: (buf, ep) => {
      sock.send(buf, endpointPort(ep), formatAddress(endpointAddress(ep)), () => {});
    },
  });
  sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    const src = parseAddress(rinfo.address);
    if (!src) return;
    nc.onResponse(msg, 0, msg.length, makeEndpoint(src, rinfo.port), 0);
  });
  try {
    const report = await nc.run();
    if (nc.portMapping) await releaseUdpMapping(nc.portMapping, localPort);
    return report;
  } finally {
    sock.close();
  }
}
