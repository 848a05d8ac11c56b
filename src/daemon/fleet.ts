import { join as joinPath } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import { AgentVpnError } from '../errors.js';
import { Identity } from '../identity/identity.js';
import { parsePrefix, type Prefix } from '../ip/prefix.js';
import { RegistryClient } from '../registry/client.js';
import { DnsServer } from '../dns/server.js';
import { TrustGate } from '../trust/gate.js';
import { TrustStore, type TrustMode } from '../trust/store.js';
import type { AuditSink } from '../audit/sink.js';
import type { ControlHandler } from './control-server.js';
import { AuditShipper, type WitnessApi } from '../audit/shipper.js';
import { Admission, tagsOf } from './admission.js';
import { auditHandlers } from './audit-control.js';
import { AuditTrail } from './audit-trail.js';
import { FleetPolicy, factsOf } from './fleet-policy.js';
import { Daemon } from './daemon.js';
import { EventHub } from './event-hub.js';
import { FleetEventSource } from './fleet-events.js';
import { FleetPaths, localEndpoints } from './fleet-paths.js';
import { Membership, type CheckedJoin, type FleetEvents } from './membership.js';
import { reportedPaths } from './path-report-source.js';

export type { PeerInfo, WhoisInfo } from './admission.js';

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
  /** Which agents get a tunnel: tofu (default), approve, open (docs/trust.md). */
  trust?: TrustMode;
  /** Rotate the identity key this often (`up --rotate-every`); off when undefined. */
  rotateEveryMs?: number;
  log: PinoLogger;
  /** More control-socket methods (`up` adds reload). */
  handlers?: Record<string, ControlHandler>;
}

/** A control method's string parameter ('' when absent: the trust store refuses it with a clear error). */
function stringParam(params: unknown, key: string): string {
  const v = (params as Record<string, unknown> | undefined)?.[key];
  return typeof v === 'string' ? v : '';
}

/** Scheduled rotations no more often than this: each costs every peer a handshake and a chain statement (64 at most). */
const MIN_ROTATE_EVERY_MS = 60_000;

/** At shutdown the last entries get this long to reach the witness; the rest go at the next start. */
const SHUTDOWN_SHIP_MS = 2_000;

/** Policy denies are summarized into the audit log this often (one entry per denied agent per interval). */
const DENY_SUMMARY_EVERY_MS = 10_000;

/** Endpoint discovery (STUN, port mapping) is repeated this often: NAT mappings and addresses change. */
const NETCHECK_INTERVAL_MS = 60_000;

/** The parts that exist once the agent is up; each is built with everything it needs. */
interface Running {
  joined: CheckedJoin;
  daemon: Daemon;
  paths: FleetPaths;
  admission: Admission;
  dns: DnsServer | null;
}

/**
 * Registry mode, composed: our membership (join, record, heartbeats, event stream), the paths
 * we are reached by (relay, disco, STUN), and admission (which agents become peers, names and
 * discovery answers). When the registry is unreachable, everything already configured keeps
 * working and the agent keeps retrying.
 */
export class FleetAgent {
  /** Our identity: the agent ID stays, the current key moves with each rotation. */
  identity: Identity;
  private readonly membership: Membership;
  private readonly trust: TrustGate;
  private running: Running | null = null;
  private daemon: Daemon | null = null;
  private paths: FleetPaths | null = null;
  private dns: DnsServer | null = null;
  private timers: NodeJS.Timeout[] = [];
  private readonly events: FleetEvents = {
    snapshot: (views) => {
      this.running?.admission.sync(views);
      if (this.running) for (const v of views) this.eventSource.observe(v);
    },
    agent: (view) => {
      this.running?.admission.applySafely(view);
      if (this.running) this.eventSource.observe(view);
    },
    removed: (id) => (id === this.identity.id ? this.membership.markRemoved() : this.running?.admission.remove(id)),
    gone: (id) => this.running?.admission.remove(id),
    policy: (view) => this.policy?.set(view),
  };
  private policy: FleetPolicy | null = null;
  private trail: AuditTrail | null = null;
  private shipper: AuditShipper | null = null;
  private readonly client: RegistryClient;
  /** The SDK's event stream (`events` on the control socket): presence, paths, trust alerts. */
  private readonly eventHub = new EventHub();
  private readonly eventSource = new FleetEventSource({
    hub: this.eventHub,
    isAdmitted: (id) => this.running?.admission.nameOf(id) !== undefined,
    pathOf: (wgKey) => this.daemon?.sock?.pathOf(wgKey) ?? null,
  });
  /** Every part reports here; the trail exists from the first step of start(). Path changes and trust alerts also feed the event stream. */
  private readonly audit: AuditSink = (type, subject, details) => {
    this.eventSource.audited(type, subject, details);
    return this.trail?.record(type, subject, details) ?? Promise.resolve();
  };

  constructor(private readonly opts: FleetOptions) {
    if (opts.rotateEveryMs !== undefined && opts.rotateEveryMs < MIN_ROTATE_EVERY_MS) {
      throw new AgentVpnError('BAD_DURATION', `--rotate-every must be at least ${MIN_ROTATE_EVERY_MS / 1000}s`, 'rotate daily or weekly (24h, 7d): every rotation costs each peer a handshake, and a chain holds 64');
    }
    this.identity = Identity.loadOrCreate(opts.stateDir);
    const store = TrustStore.open(opts.stateDir, opts.network, (e) => opts.log.error({ err: e.message }, 'writing the trust store failed; will retry'));
    this.trust = new TrustGate(store, opts.trust ?? 'tofu', opts.log, this.audit);
    const client = new RegistryClient({ url: opts.registryUrl, identity: this.identity, network: opts.network, caFile: opts.caFile });
    this.client = client;
    this.membership = new Membership({
      client, identity: this.identity, name: opts.name, token: opts.token, network: opts.network,
      capabilities: opts.capabilities, stateDir: opts.stateDir, log: opts.log,
      endpoints: () => this.publishedEndpoints(), audit: this.audit,
      homeRelay: () => this.paths?.homeRelay ?? null,
      paths: () => (this.running ? reportedPaths(this.running.daemon, this.running.admission) : []),
    });
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
    // The trail first: the join, and everything after it, is recorded.
    this.trail = await AuditTrail.open(opts.stateDir, this.identity, opts.log);
    const api = witnessApi(this.client);
    this.shipper = new AuditShipper({
      log: this.trail.log, dir: this.trail.dir, agentId: this.identity.id, api, audit: this.audit,
      warn: (obj, msg) => opts.log.warn(obj, msg),
    });
    const joined = await this.membership.join();
    const { join, pool, ula } = joined;
    const addresses: Prefix[] = [
      { ...parsePrefix(join.ipv4)!, bits: pool.bits },
      { ...parsePrefix(join.ipv6)!, bits: ula.bits },
    ];
    const self = { id: this.identity.id, name: opts.name, network: join.network, ipv4: join.ipv4, ipv6: join.ipv6 };
    const policy = new FleetPolicy(() => this.policyFacts(self), opts.log, joinPath(opts.stateDir, `policy-${opts.network}.json`), this.audit);
    this.policy = policy;
    const daemon = new Daemon({
      iface: opts.iface,
      log: opts.log,
      firewall: opts.firewall,
      filter: policy.filter,
      uapi: 'read-only', // wg show works; peers, keys and allowed IPs stay the registry's and the trust store's
      config: { privateKey: this.identity.wgPrivateKey, addresses, listenPort: opts.listenPort, mtu: opts.mtu, peers: [] },
      alerts: () => this.alerts(),
      audit: this.audit,
      auditSubjectOf: (wgKey) => this.running?.admission.idOfWgKey(Buffer.from(wgKey).toString('base64')) ?? Buffer.from(wgKey).toString('base64'),
      handlers: {
        ...opts.handlers,
        ...auditHandlers(this.trail, this.shipper, api, () => this.identity),
        id: () => this.describeSelf(joined),
        peers: (params) => this.admission().peers((params as { cap?: string } | undefined)?.cap),
        resolve: (params) => this.admission().resolve(String((params as { name?: unknown } | undefined)?.name ?? '')),
        ping: (params) => this.ping(params as { name?: unknown; count?: unknown } | undefined),
        netcheck: (params) => this.paths!.runNetcheck(params as { servers?: unknown } | undefined),
        keyRotate: () => this.rotateKey(),
        trustList: () => this.trust.list(),
        trustAccept: (params) => this.trustAction(() => this.trust.accept(stringParam(params, 'name'))),
        trustApprove: (params) => this.trustAction(() => this.trust.approve(stringParam(params, 'name'))),
        trustBlock: (params) => this.trustAction(() => this.trust.block(stringParam(params, 'target'))),
        trustForget: (params) => this.trustAction(() => this.trust.forget(stringParam(params, 'name'))),
        policyGet: () => ({ text: policy.text() }),
        events: (params) => this.eventHub.subscribe(params),
        whois: (params) => this.admission().whois(String((params as { address?: unknown } | undefined)?.address ?? '')),
      },
    });
    this.daemon = daemon;
    await daemon.start();
    const paths = new FleetPaths({
      daemon, identity: this.identity, join, iface: opts.iface, caFile: opts.caFile, log: opts.log,
      // A new home relay goes out in a new record: peers send through it once they see it.
      onHomeRelayChange: () => void (this.membership.hasPublished && this.membership.publish()),
    });
    this.paths = paths;
    await paths.start();
    await this.refreshEndpoints();
    const admission = new Admission({
      daemon, pool, log: opts.log, gate: this.trust, self, audit: this.audit,
      appCapabilitiesOf: (id) => policy.appOf(id),
      onChange: () => policy.changed(),
    });
    if (opts.dns) {
      this.dns = new DnsServer({ bind: [join.ipv4, join.ipv6], zone: join.network, lookup: (name) => admission.lookupName(name) });
      await this.dns.start();
    }
    this.running = { joined, daemon, paths, admission, dns: this.dns };
    this.membership.watch(this.events);
    const heartbeatMs = Math.min(Math.max(join.heartbeatIntervalMs, 1000), 600_000);
    this.timers.push(setInterval(() => void this.membership.heartbeat(this.events), heartbeatMs));
    this.timers.push(setInterval(() => void this.refreshEndpoints(), NETCHECK_INTERVAL_MS));
    this.timers.push(setInterval(() => this.recordDenies(), DENY_SUMMARY_EVERY_MS));
    this.shipper.start();
    if (opts.rotateEveryMs) {
      this.timers.push(setInterval(() => {
        this.rotateKey().catch((e) => opts.log.error({ err: (e as Error).message, hint: (e as { hint?: string }).hint }, 'scheduled key rotation failed'));
      }, opts.rotateEveryMs));
    }
    return daemon;
  }

  /**
   * Rotates our key (pre-committed next key, statement signed by the old key): persisted first,
   * then every part that signs or seals with it moves, and the new record with its chain goes out.
   * Peers follow the chain and replace our WireGuard key; the tunnel re-handshakes in a round trip.
   */
  async rotateKey(): Promise<{ id: string; seq: number; key: string }> {
    const next = this.identity.rotate();
    this.identity = next;
    this.trail?.setIdentity(next);
    // Logged before the new key is used or announced.
    await this.audit('key.rotated', next.id, { seq: next.seq, key: Buffer.from(next.publicKey).toString('base64'), wgPublicKey: Buffer.from(next.wgPublicKey).toString('base64') });
    this.membership.setIdentity(next);
    this.daemon?.setPrivateKey(next.wgPrivateKey);
    this.paths?.setIdentity(next);
    this.policy?.changed();
    this.opts.log.info({ id: next.id, seq: next.seq, event: 'key-rotated' }, `key rotated (statement ${next.seq})`);
    await this.membership.publish();
    return { id: next.id, seq: next.seq, key: Buffer.from(next.publicKey).toString('base64') };
  }

  /**
   * New capabilities (a reload): checked, recorded, and published in a fresh record; the registry
   * and the other agents see them once it lands (retried in the background while it is down).
   */
  async setCapabilities(capabilities: string[]): Promise<void> {
    this.membership.setCapabilities(capabilities); // throws on a bad one, before anything changed
    const before = this.opts.capabilities;
    this.opts.capabilities = capabilities;
    this.policy?.changed();
    await this.audit('capabilities.changed', this.identity.id, { from: before, to: capabilities });
    this.opts.log.info({ event: 'capabilities-changed', capabilities }, 'capabilities changed; publishing the new record');
    void this.membership.publish();
  }

  /** The name of the admitted agent with this WireGuard key (base64): the metrics' peer label. */
  peerNameOf(wgKey: string): string | undefined {
    const id = this.running?.admission.idOfWgKey(wgKey);
    return id === undefined ? undefined : this.running?.admission.nameOf(id);
  }

  /** One line for systemd's STATUS=: "up, 3 peers, registry connected". */
  summary(): string {
    const peers = this.daemon?.status().peers.length ?? 0;
    // Before the event stream's first connect (just after the join) the registry is not "unreachable" yet.
    const registry = this.membership.registryUp ? 'connected' : this.membership.hasPublished ? 'unreachable, retrying' : 'connecting';
    return `up, ${peers} peer${peers === 1 ? '' : 's'}, registry ${registry}`;
  }

  /**
   * An operator's trust decision, then every record offered to the gate again (admitted ones too:
   * a block drops the peer). Answered once its audit entries are on disk.
   */
  private async trustAction<T>(act: () => T): Promise<T> {
    const result = act();
    this.running?.admission.recheck();
    await this.trail?.log.flushed();
    return result;
  }

  /** Policy denies since the last call, one audit entry per denied agent (counted in the data path, summarized here). */
  private recordDenies(): void {
    const admission = this.running?.admission;
    if (!admission || !this.trail) return;
    this.trail.recordDenies(this.running!.daemon.status().peers.flatMap((p) => {
      const id = admission.idOfWgKey(p.publicKey);
      return id && p.policyDenies ? [{ id, name: admission.nameOf(id) ?? '', denies: p.policyDenies }] : [];
    }));
  }

  /** What needs an operator, for `status`. */
  private alerts(): string[] {
    const removed = this.membership.removedByOperator ? [`an operator removed this agent from network ${this.opts.network}; run \`agentvpn up\` again to re-join`] : [];
    const audit = this.shipper?.alert();
    return [...removed, ...this.trust.alertLines(), ...(audit ? [audit] : [])];
  }

    /** What the policy is compiled against: us (tags from the registry's view of us) and the admitted agents. */
  private policyFacts(self: { id: string; name: string; ipv4: string; ipv6: string }) {
    const admission = this.running?.admission;
    const selfView = admission?.selfView;
    return {
      self: { ...self, tags: selfView ? tagsOf(selfView) : [], capabilities: this.opts.capabilities, wgPublicKey: Buffer.from(this.identity.wgPublicKey).toString('base64') },
      peers: (admission?.admitted() ?? []).map(factsOf),
    };
  }

  private admission(): Admission {
    if (!this.running) throw new Error('the fleet agent is not up');
    return this.running.admission;
  }

  /** Rediscovers our endpoints and republishes our record when they changed. */
  private async refreshEndpoints(): Promise<void> {
    const changed = await this.paths!.refreshEndpoints();
    if (changed && this.membership.hasPublished) await this.membership.publish();
  }

  private publishedEndpoints(): string[] {
    const found = this.paths?.candidates ?? [];
    return found.length || !this.daemon ? found : localEndpoints(this.daemon.status().listenPort, this.opts.iface);
  }

  async stop(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.running?.admission.stop();
    this.policy?.stop();
    await this.paths?.stop();
    await this.membership.stop();
    await this.dns?.stop();
    await this.daemon?.stop();
    this.trust.store.flush();
    // Last: the shutdown's own entries (down, left) go to disk and, when the registry answers, to the witness.
    await this.shipper?.stop();
    await this.trail?.log.flushed();
    if (this.shipper) await Promise.race([this.shipper.shipNow().catch(() => {}), new Promise((r) => setTimeout(r, SHUTDOWN_SHIP_MS).unref())]);
    await this.trail?.close();
  }

  private describeSelf({ join }: CheckedJoin) {
    return {
      id: this.identity.id, name: this.opts.name, network: join.network, ipv4: join.ipv4, ipv6: join.ipv6,
      wgPublicKey: Buffer.from(this.identity.wgPublicKey).toString('base64'),
      capabilities: this.opts.capabilities, tags: this.running?.admission.selfView ? tagsOf(this.running.admission.selfView) : [],
      registry: this.opts.registryUrl, registryConnected: this.membership.registryUp,
    };
  }

  /** Disco pings to an agent over its current path, each reply with the path it took. */
  private async ping(params: { name?: unknown; count?: unknown } | undefined) {
    const name = String(params?.name ?? '');
    const count = Math.min(Math.max(Number(params?.count ?? 4) || 4, 1), 100);
    const target = this.admission().findAgent(name);
    const replies = await this.daemon!.sock!.ping(Buffer.from(target.record.wgPublicKey, 'base64'), count);
    return { name: target.record.name, ipv4: target.record.ipv4, replies };
  }
}

/** The registry client's audit calls, as the shipper and `audit verify` use them. */
function witnessApi(client: RegistryClient): WitnessApi & { entries(from: number, limit: number): Promise<string[]> } {
  return {
    witness: () => client.auditWitness(),
    ship: (body) => client.auditShip(body),
    head: () => client.auditHead(),
    entries: (from, limit) => client.auditEntries(from, limit),
  };
}
