import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIP, type Server as TcpServer, type Socket as TcpSocket } from 'node:net';
import { AgentVpnError } from '../errors.js';
import { parseAddress } from '../ip/prefix.js';
import { QueryBudget, sourceKey } from './budget.js';
import { resolveDnsLimits, type DnsLimits } from './limits.js';
import {
  CLASS, OPCODE_QUERY, RCODE, TYPE, buildResponse, endsWithName, labelText, nameFromString, parseQuery,
  type Name, type Query, type ResourceRecord, type Response,
} from './message.js';
import { DnsTcpConnection, type DnsTcpShedStats } from './tcp-connection.js';

export interface NameAnswer {
  ipv4?: string;
  ipv6?: string;
}

export interface DnsServerOptions {
  /** Addresses to bind (e.g. ['100.64.0.1', 'fd12:3456:789a::1']). */
  bind: string[];
  /** Port for UDP and TCP (default 53). 0 lets the OS pick one port, then used for every socket. */
  port?: number;
  /** The zone we are authoritative for, e.g. 'prod' for names like planner.prod (no trailing dot). */
  zone: string;
  /** Returns the addresses of an agent name (the label before the zone, lowercased), or null if unknown. */
  lookup(name: string): NameAnswer | null;
  /** TTL of answers and of negative answers, in seconds. */
  ttl?: number;
  /** Where socket errors go (a pino logger fits). */
  log?: { warn(obj: object, msg?: string): void };
  /** Budgets per client and in total (defaults: DEFAULT_DNS_LIMITS). */
  limits?: Partial<DnsLimits>;
  /**
   * Counts each loopback address as a source of its own, as tests do that stand in for members'
   * overlay addresses with 127/8 ones. By default all of loopback is one source (budget.ts, sourceKey).
   */
  loopbackSourcesApart?: boolean;
}

export interface DnsStats {
  /** Every message handled, over UDP or TCP (those shed before it are counted in DnsShedStats). */
  queries: number;
  /** NOERROR with an address record (or the SOA, asked at the apex). */
  answered: number;
  /** NOERROR without records: the name exists, not with that type. */
  nodata: number;
  nxdomain: number;
  /** Names outside the zone, classes other than IN, opcodes other than QUERY, EDNS versions other than 0. */
  refused: number;
  /** Dropped (unreadable header) or answered FORMERR. */
  malformed: number;
  /** The lookup function threw. */
  servfail: number;
}

/** Work refused or held back to keep the responder's cost bounded (see DnsLimits). */
export interface DnsShedStats extends DnsTcpShedStats {
  /** UDP queries dropped unread: their source, or all sources together, were over budget. */
  udpOverBudget: number;
  /** TCP connections closed at once: their source already had its share open. */
  tcpRefusedPerSource: number;
  /** TCP connections closed at once: all the slots were taken. */
  tcpRefusedTotal: number;
}

/** 5 s: names follow the fleet quickly, and resolvers ask again soon after an agent moves. */
export const DEFAULT_TTL = 5;
export const DEFAULT_PORT = 53;
/** Agent names as the registry allows them; any other label cannot name an agent. */
const AGENT_LABEL = /^[a-z0-9-]{1,63}$/;
// SOA timers matter only to secondary servers, which we never have; conventional values.
const SOA_REFRESH = 3600;
const SOA_RETRY = 600;
const SOA_EXPIRE = 86400;

/** Tries to find one free port number for both UDP and TCP when asked for port 0. */
const PORT_0_ATTEMPTS = 5;

/**
 * An authoritative DNS responder for one zone of agent names: `<name>.<zone>` A and AAAA,
 * answered from the daemon's view of the fleet, over UDP and TCP on the given addresses.
 * It never recurses: any name outside the zone is REFUSED. What a client may cost it (queries
 * per second, TCP connections, unread answers) is bounded by DnsLimits, per source and in total.
 */
export class DnsServer {
  readonly stats: DnsStats = { queries: 0, answered: 0, nodata: 0, nxdomain: 0, refused: 0, malformed: 0, servfail: 0 };
  readonly shed: DnsShedStats = {
    udpOverBudget: 0, tcpRefusedPerSource: 0, tcpRefusedTotal: 0, tcpPaused: 0, tcpDelayed: 0, tcpIdleClosed: 0, tcpLifetimeClosed: 0,
  };
  readonly limits: DnsLimits;
  private readonly budget: QueryBudget;
  private readonly zone: Name;
  private readonly ttl: number;
  private readonly soa: ResourceRecord;
  private boundPort: number;
  private udp: UdpSocket[] = [];
  private tcp: TcpServer[] = [];
  private readonly connections = new Set<TcpSocket>();
  /** Open TCP connections per source address. */
  private readonly connectionsFrom = new Map<string, number>();
  private running = false;

  constructor(private readonly opts: DnsServerOptions) {
    const invalid = (what: string) =>
      new AgentVpnError('DNS_CONFIG', `invalid DNS server option: ${what}`, 'check the DNS options passed to the daemon');
    try {
      this.zone = nameFromString(opts.zone);
    } catch {
      throw invalid(`zone ${JSON.stringify(opts.zone)}`);
    }
    if (this.zone.length === 0) throw invalid('zone is empty (the root zone is not ours to serve)');
    for (const a of opts.bind) if (!isIP(a)) throw invalid(`bind address ${JSON.stringify(a)}`);
    if (opts.bind.length === 0) throw invalid('no bind address');
    this.boundPort = opts.port ?? DEFAULT_PORT;
    if (!Number.isInteger(this.boundPort) || this.boundPort < 0 || this.boundPort > 65535) throw invalid(`port ${opts.port}`);
    this.limits = resolveDnsLimits(opts.limits);
    this.budget = new QueryBudget({
      perSourceRate: this.limits.queriesPerSecondPerSource, perSourceBurst: this.limits.queryBurstPerSource,
      totalRate: this.limits.queriesPerSecond, totalBurst: this.limits.queryBurst,
    });
    this.ttl = opts.ttl ?? DEFAULT_TTL;
    if (!Number.isInteger(this.ttl) || this.ttl < 0 || this.ttl > 0x7fffffff) throw invalid(`ttl ${opts.ttl}`);
    this.soa = {
      name: this.zone,
      type: TYPE.SOA,
      ttl: this.ttl,
      data: {
        mname: this.zone,
        rname: [Buffer.from('hostmaster'), ...this.zone],
        serial: 1,
        refresh: SOA_REFRESH,
        retry: SOA_RETRY,
        expire: SOA_EXPIRE,
        minimum: this.ttl,
      },
    };
  }

  /** The port the sockets are bound to (the chosen one when options.port was 0). */
  get port(): number {
    return this.boundPort;
  }

  async start(): Promise<void> {
    if (this.running) return;
    // With port 0, UDP picks a free port and TCP must take the same number, which another socket
    // may hold: then both start over on a fresh port (a few times).
    for (let attempt = 1; ; attempt++) {
      this.running = true;
      try {
        for (const address of this.opts.bind) {
          this.udp.push(await this.bindUdp(address));
          this.tcp.push(await this.listenTcp(address));
        }
        return;
      } catch (e) {
        await this.stop();
        const taken = ((e as Error).cause as NodeJS.ErrnoException | undefined)?.code === 'EADDRINUSE';
        if (!(this.opts.port === 0 && taken && attempt < PORT_0_ATTEMPTS)) throw e;
      }
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    const udp = this.udp.splice(0);
    const tcp = this.tcp.splice(0);
    for (const c of this.connections) c.destroy();
    this.connections.clear();
    this.connectionsFrom.clear();
    await Promise.all([
      ...udp.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))),
      ...tcp.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))),
    ]);
    if (this.opts.port === 0) this.boundPort = 0;
  }

  /**
   * The transport-free core: one message in, the response to send back (null: send nothing).
   * Never throws, whatever the bytes.
   */
  handle(message: Uint8Array): Buffer | null {
    this.stats.queries++;
    let query: Query | null;
    try {
      query = parseQuery(message);
    } catch {
      query = null; // parseQuery throws nothing by design; stay safe if that ever changes
    }
    if (!query) {
      this.stats.malformed++;
      return null;
    }
    try {
      return buildResponse(this.respond(query));
    } catch {
      this.stats.servfail++;
      return buildResponse({ id: query.id, opcode: query.opcode, rd: query.rd, aa: false, rcode: RCODE.SERVFAIL });
    }
  }

  private respond(query: Query): Response {
    const base = { id: query.id, opcode: query.opcode, rd: query.rd, question: query.question, edns: query.edns !== null };
    const refuse = (rcode: number = RCODE.REFUSED): Response => {
      this.stats.refused++;
      return { ...base, aa: false, rcode };
    };
    if (query.error) {
      this.stats.malformed++;
      return { ...base, aa: false, rcode: RCODE.FORMERR };
    }
    if (query.opcode !== OPCODE_QUERY) return refuse(RCODE.NOTIMP);
    if (query.edns && query.edns.version !== 0) return refuse(RCODE.BADVERS);
    const q = query.question!;
    if ((q.class !== CLASS.IN && q.class !== CLASS.ANY) || !endsWithName(q.name, this.zone)) return refuse();

    const auth = { ...base, aa: true };
    const relative = q.name.slice(0, q.name.length - this.zone.length).map(labelText);
    const nxdomain = (): Response => {
      this.stats.nxdomain++;
      return { ...auth, rcode: RCODE.NXDOMAIN, authority: [this.soa] };
    };
    const nodata = (): Response => {
      this.stats.nodata++;
      return { ...auth, rcode: RCODE.NOERROR, authority: [this.soa] };
    };

    // The apex exists (it owns the SOA). Answering NXDOMAIN there would tell resolvers that
    // follow RFC 8020 that nothing below it exists either, hiding every agent.
    if (relative.length === 0) {
      if (q.type !== TYPE.SOA) return nodata();
      this.stats.answered++;
      return { ...auth, rcode: RCODE.NOERROR, answers: [{ ...this.soa, name: q.name }] };
    }
    // No wildcards and nothing below an agent's name.
    if (relative.length > 1 || !AGENT_LABEL.test(relative[0])) return nxdomain();

    let found: NameAnswer | null;
    try {
      found = this.opts.lookup(relative[0]);
    } catch {
      this.stats.servfail++;
      return { ...base, aa: false, rcode: RCODE.SERVFAIL };
    }
    if (!found) return nxdomain();

    const family = q.type === TYPE.A ? 4 : q.type === TYPE.AAAA ? 16 : 0;
    const text = family === 4 ? found.ipv4 : family === 16 ? found.ipv6 : undefined;
    const addr = text ? parseAddress(text) : null;
    if (!addr || addr.length !== family) return nodata();
    this.stats.answered++;
    return { ...auth, rcode: RCODE.NOERROR, answers: [{ name: q.name, type: q.type, ttl: this.ttl, data: addr }] };
  }

  private async bindUdp(address: string): Promise<UdpSocket> {
    const socket = isIP(address) === 6 ? createSocket({ type: 'udp6', ipv6Only: true }) : createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(this.boundPort, address, () => {
        socket.off('error', reject);
        resolve();
      });
    }).catch((e: NodeJS.ErrnoException) => {
      socket.close();
      throw this.bindError('udp', address, e);
    });
    this.boundPort = socket.address().port;
    socket.on('error', (err) => this.opts.log?.warn({ err, address }, 'dns udp socket error'));
    socket.on('message', (msg, from) => {
      if (!this.budget.take(this.sourceOf(from.address))) {
        this.shed.udpOverBudget++;
        return;
      }
      const reply = this.handle(msg);
      if (reply) {
        socket.send(reply, from.port, from.address, (err) => {
          if (err) this.opts.log?.warn({ err, to: from.address }, 'dns reply not sent');
        });
      }
    });
    return socket;
  }

  private async listenTcp(address: string): Promise<TcpServer> {
    const server = createServer((c) => this.serveTcp(c));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: address, port: this.boundPort, ipv6Only: isIP(address) === 6 }, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((e: NodeJS.ErrnoException) => {
      server.close();
      throw this.bindError('tcp', address, e);
    });
    server.on('error', (err) => this.opts.log?.warn({ err, address }, 'dns tcp server error'));
    return server;
  }

  /** Admits a TCP client within the connection limits; its messages then share its source's query budget. */
  private serveTcp(conn: TcpSocket): void {
    const source = conn.remoteAddress && this.sourceOf(conn.remoteAddress);
    if (!source) {
      conn.destroy(); // already gone
      return;
    }
    const open = this.connectionsFrom.get(source) ?? 0;
    if (open >= this.limits.tcpConnectionsPerSource) {
      this.shed.tcpRefusedPerSource++;
      conn.destroy();
      return;
    }
    if (this.connections.size >= this.limits.tcpConnections) {
      this.shed.tcpRefusedTotal++;
      conn.destroy();
      return;
    }
    this.connections.add(conn);
    this.connectionsFrom.set(source, open + 1);
    conn.on('close', () => {
      if (!this.connections.delete(conn)) return; // stop() already forgot it
      const left = (this.connectionsFrom.get(source) ?? 1) - 1;
      if (left > 0) this.connectionsFrom.set(source, left);
      else this.connectionsFrom.delete(source);
    });
    new DnsTcpConnection(conn, {
      answer: (message) => this.handle(message),
      admit: () => this.budget.take(source),
      limits: this.limits,
      shed: this.shed,
    });
  }

  private sourceOf(address: string): string {
    return this.opts.loopbackSourcesApart ? address : sourceKey(address);
  }

  private bindError(proto: string, address: string, e: NodeJS.ErrnoException): AgentVpnError {
    const where = `${address} port ${this.boundPort}/${proto}`;
    const hint =
      e.code === 'EACCES' ? 'ports below 1024 need root or CAP_NET_BIND_SERVICE'
      : e.code === 'EADDRINUSE' ? 'another DNS server listens there; stop it or choose another address'
      : e.code === 'EADDRNOTAVAIL' ? 'the address must be assigned to an interface first (an IPv6 address still doing duplicate address detection cannot be bound yet: add it with nodad)'
      : 'check the DNS bind addresses';
    return new AgentVpnError('DNS_BIND', `cannot bind the DNS responder to ${where}: ${e.message}`, hint, { cause: e });
  }
}
