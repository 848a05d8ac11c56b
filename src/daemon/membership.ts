import { clip } from '../audit/entry.js';
import type { AuditSink } from '../audit/sink.js';
import { existsSync, readFileSync } from 'node:fs';
import { join as joinPath } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import { AgentVpnError } from '../errors.js';
import { networkUlaPrefix, overlayIPv6 } from '../identity/addresses.js';
import type { Identity } from '../identity/identity.js';
import { isOverlayPool } from '../ip/overlay-space.js';
import { formatAddress, formatPrefix, parseAddress, parsePrefix, type Prefix } from '../ip/prefix.js';
import { formatCapability, parseCapability } from '../net/capabilities.js';
import { RegistryRefusal, type AgentView, type JoinResult, type PolicyView, type RegistryClient, type Watcher } from '../registry/client.js';
import type { ReportedPath } from '../registry/path-report.js';
import { RECORD_LIFETIME_MS, signRecord, type AgentRecord } from '../registry/record.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { inPrefix } from './prefixes.js';

/** A re-signed record is published this long before the old one expires. */
const REPUBLISH_MARGIN_MS = RECORD_LIFETIME_MS / 4;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 30_000;
/** Joins refused for the agent's write budget (a restart loop spends it) waited out before giving up, and the longest wait. */
const JOIN_BUDGET_WAITS = 5;
const JOIN_BUDGET_MAX_WAIT_MS = 10_000;
/** Before re-joining a registry that no longer knows us, wait this long for a 'removed' event saying why. */
const REJOIN_DELAY_MS = 3_000;
/** Our paths go to the registry's console when they change, and this often for their RTTs. */
const PATHS_REFRESH_MS = 60_000;

export interface MembershipOptions {
  client: RegistryClient;
  identity: Identity;
  name: string;
  token?: string;
  network: string;
  capabilities: string[];
  stateDir: string;
  log: PinoLogger;
  /** The candidate endpoints to publish now. */
  endpoints: () => string[];
  /** Our home relay's name, for the record (null: none, or not one the record can name). */
  homeRelay?: () => string | null;
  /** Joins, leaves, removal and registry outages go into the audit log. */
  audit: AuditSink;
  /** Our paths to our peers now, reported with the heartbeats for the registry's console. */
  paths?: () => ReportedPath[];
}

/** What the fleet does with the registry's view of the other agents. */
export interface FleetEvents {
  /** The whole fleet (on every (re)connect): agents missing from it are gone. */
  snapshot(views: AgentView[]): void;
  agent(view: AgentView): void;
  /** An operator removed or blocked the agent. */
  removed(id: string): void;
  /** The agent is no longer in the registry's view (found by a resume by digest): dropped, as a snapshot that no longer lists it would. */
  gone(id: string): void;
  /** The network's policy (null: none). */
  policy(view: PolicyView | null): void;
}

/** A join whose addresses were checked: the pool and the network's ULA /48. */
export interface CheckedJoin {
  join: JoinResult;
  pool: Prefix;
  ula: Prefix;
}

/**
 * Our membership of the network: the join (cached, so a restart with the registry down keeps
 * the permanent addresses), our signed record, heartbeats, and the event stream that tells us
 * about the other agents. When the registry is unreachable, all of it retries in the background.
 */
export class Membership {
  private seq = 0;
  private publishedAt = 0;
  private publishing: Promise<void> | null = null;
  private publishAgain = false;
  private watcher: Watcher | null = null;
  private current: JoinResult | null = null;
  registryUp = false;
  /** An operator removed us from the network: we stop re-joining until someone runs `up` again. */
  removedByOperator = false;
  private stopped = false;
  /** The last path report the registry kept (peers, kinds, endpoints) and when we last sent one. */
  private pathsShape = '';
  private pathsSentAt = 0;

  constructor(private readonly opts: MembershipOptions) {
    for (const c of opts.capabilities) parseCapability(c); // fail early on a bad --cap
  }

  private get cacheFile(): string {
    return joinPath(this.opts.stateDir, `join-${this.opts.network}.json`);
  }

  /** Joins the network (or, with the registry down, reuses the last join: addresses are permanent). */
  async join(): Promise<CheckedJoin> {
    let result: JoinResult;
    try {
      result = await this.joinWithinBudget();
      writeFileAtomic(this.cacheFile, JSON.stringify(result));
      this.opts.audit('registry.joined', result.network, { name: this.opts.name, ipv4: result.ipv4, ipv6: result.ipv6 });
    } catch (e) {
      if (!(e instanceof AgentVpnError && e.code === 'REGISTRY_UNREACHABLE' && existsSync(this.cacheFile))) {
        this.opts.audit('registry.join-refused', this.opts.network, { code: e instanceof AgentVpnError ? e.code : 'ERROR', message: clip((e as Error).message) });
        throw e;
      }
      this.opts.log.warn({ err: e.message }, 'registry unreachable; starting with the addresses of the last join');
      this.opts.audit('registry.outage', this.opts.network, { during: 'join', message: clip(e.message) });
      result = JSON.parse(readFileSync(this.cacheFile, 'utf8')) as JoinResult;
    }
    this.current = result;
    return { join: result, ...this.check(result) };
  }

  /** The registry's join answer, waiting out a refusal for the agent's write budget a few times. */
  private async joinWithinBudget(): Promise<JoinResult> {
    for (let waits = 0; ; waits++) {
      try {
        return await this.opts.client.join(this.opts.name, this.opts.token);
      } catch (e) {
        if (!(e instanceof RegistryRefusal && e.code === 'AGENT_RATE_LIMITED') || waits >= JOIN_BUDGET_WAITS || this.stopped) throw e;
        const waitMs = Math.min(JOIN_BUDGET_MAX_WAIT_MS, Math.max(100, Number(e.answer.retryAfterMs) || 1000));
        this.opts.log.warn({ err: e.message, retryInMs: waitMs }, 'the registry refused our join for now (this agent wrote too often); waiting');
        await new Promise((r) => setTimeout(r, waitMs).unref());
      }
    }
  }

  /**
   * Refuses a join answer that would route more than the overlay into the tunnel: a pool of
   * public addresses (a registry could then take traffic for 8.8.8.8), or a ULA /48 other than
   * the one the network's name gives.
   */
  private check(join: JoinResult): { pool: Prefix; ula: Prefix } {
    const pool = parsePrefix(join.pool);
    const ula = parsePrefix(join.ulaPrefix);
    const ok = pool && pool.family === 4 && pool.bits >= 8 && pool.bits <= 30 && isOverlayPool(pool) && inPrefix(join.ipv4, pool)
      && join.network === this.opts.network && ula && formatPrefix(ula) === formatPrefix(networkUlaPrefix(join.network))
      && formatAddress(parseAddress(join.ipv6) ?? new Uint8Array(16)) === formatAddress(overlayIPv6(join.network, this.opts.identity.idKey));
    if (!ok) {
      throw new AgentVpnError('BAD_JOIN', `the registry answered the join with unusable addresses (network ${join.network}, pool ${join.pool}, ipv4 ${join.ipv4}, ula ${join.ulaPrefix})`,
        'the registry must use an IPv4 pool of /8 to /30 inside 100.64.0.0/10 or private space (10/8, 172.16/12, 192.168/16), and the network\'s own ULA /48; check its --pool');
    }
    return { pool: pool!, ula: ula! };
  }

  private buildRecord(join: JoinResult): AgentRecord {
    const now = Date.now();
    this.seq = Math.max(now, this.seq + 1); // grows across restarts too
    const homeRelay = this.opts.homeRelay?.() ?? null;
    return {
      v: 1, network: join.network, id: this.opts.identity.id, name: this.opts.name,
      wgPublicKey: Buffer.from(this.opts.identity.wgPublicKey).toString('base64'),
      ipv4: join.ipv4, ipv6: join.ipv6,
      endpoints: this.opts.endpoints(),
      capabilities: this.opts.capabilities.map((c) => formatCapability(parseCapability(c))),
      seq: this.seq, issuedAt: now, expiresAt: now + RECORD_LIFETIME_MS,
      ...(homeRelay ? { homeRelay } : {}),
    };
  }

  get hasPublished(): boolean {
    return this.publishedAt > 0;
  }

  /**
   * Publishes a fresh signed record, retrying with backoff until the registry takes it; one loop at
   * a time. Asked again while a publish is on its way (a key rotation, new endpoints), the loop
   * publishes once more when it is done, so the newest record always goes out.
   */
  publish(): Promise<void> {
    const join = this.current;
    if (!join) return Promise.resolve();
    if (this.publishing) {
      this.publishAgain = true;
      return this.publishing;
    }
    this.publishing = (async () => {
      do {
        this.publishAgain = false;
        await this.publishOnce(join);
      } while (this.publishAgain && !this.stopped);
    })().finally(() => (this.publishing = null));
    return this.publishing;
  }

  private async publishOnce(join: JoinResult): Promise<void> {
    for (let delay = RETRY_MIN_MS; !this.stopped; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
      try {
        // Always with our key chain: peers and the registry pin the inception statement too.
        const record = this.buildRecord(join);
        await this.opts.client.publish(signRecord(this.opts.identity, record), this.opts.identity.chain);
        this.publishedAt = Date.now();
        // Our home relay moved while this record was on its way (before the first publish, nobody is told): send the newer one.
        if ((this.opts.homeRelay?.() ?? null) !== (record.homeRelay ?? null)) this.publishAgain = true;
        return;
      } catch (e) {
        this.opts.log.warn({ err: (e as Error).message, retryInMs: delay }, 'publishing our record failed; will retry');
        await new Promise((r) => setTimeout(r, delay).unref());
      }
    }
  }

  /** New capabilities (a reload): checked here, in the next record published. */
  setCapabilities(capabilities: string[]): void {
    for (const c of capabilities) parseCapability(c);
    this.opts.capabilities = capabilities;
  }

  /** After a key rotation: records and requests are signed with the new key from now on. */
  setIdentity(identity: Identity): void {
    this.opts.identity = identity;
    this.opts.client.setIdentity(identity);
  }

  /** The registry told us an operator removed (or blocked) us: no heartbeats, no re-join, no event stream. */
  markRemoved(): void {
    if (this.removedByOperator) return;
    this.removedByOperator = true;
    this.watcher?.close();
    this.watcher = null;
    this.registryUp = false;
    this.opts.audit('registry.removed', this.opts.network, {});
    this.opts.log.error({ network: this.opts.network }, 'an operator removed this agent from the network; it will not re-join on its own (run `agentvpn up` again to re-join with a token)');
  }

  async heartbeat(events: FleetEvents): Promise<void> {
    if (this.removedByOperator) return;
    try {
      if (Date.now() - this.publishedAt > RECORD_LIFETIME_MS - REPUBLISH_MARGIN_MS) await this.publish();
      else await this.opts.client.heartbeat();
      void this.reportPaths();
      // The registry answers again but the event stream is still in its backoff: reconnect now.
      if (!this.registryUp) this.watch(events);
    } catch (e) {
      const code = e instanceof AgentVpnError ? e.code : '';
      // A registry that lost our record (restored from an older backup, say) gets it again; but
      // not if an operator removed us: that news may still be on its way down the event stream.
      if (code === 'NOT_FOUND' || code === 'NOT_JOINED') {
        await new Promise((r) => setTimeout(r, REJOIN_DELAY_MS).unref());
        if (this.removedByOperator || this.stopped) return;
        await this.joinWithinBudget().catch(() => {});
        await this.publish();
      }
    }
  }

  /** Sends our paths when they changed (peer, kind, endpoint), else every PATHS_REFRESH_MS for the RTTs. */
  private async reportPaths(): Promise<void> {
    const paths = this.opts.paths?.();
    if (!paths) return;
    const shape = JSON.stringify(paths.map((p) => [p.peer, p.kind, p.endpoint]));
    const now = Date.now();
    if (shape === this.pathsShape && now - this.pathsSentAt < PATHS_REFRESH_MS) return;
    this.pathsSentAt = now;
    try {
      // Not kept (too soon after the last one): sent again with the next heartbeat.
      if (await this.opts.client.reportPaths(paths)) this.pathsShape = shape;
    } catch (e) {
      // An older registry without the route, or one that is down: try again in PATHS_REFRESH_MS.
      this.pathsShape = shape;
      this.opts.log.debug({ err: (e as Error).message }, 'reporting our paths to the registry failed');
    }
  }

  /**
   * Follows the fleet over the registry's event stream (the client reconnects with backoff). A
   * watcher started again (the registry answers while the stream waits in its backoff) resumes
   * where the last one was, so a blip costs the registry the changes, not the whole fleet; after
   * a registry restart or a failover the stream resumes by digest (what differs, by bucket).
   */
  watch(events: FleetEvents): void {
    const { log } = this.opts;
    const from = this.watcher?.resumePoint() ?? null;
    const held = this.watcher?.heldViews() ?? null;
    this.watcher?.close();
    this.watcher = this.opts.client.watch({
      snapshot: (agents) => {
        events.snapshot(agents);
        // A snapshot may come from a registry that restarted: make sure it has our record. A
        // stream resumed from its point is the same registry process, which has it; one resumed
        // by digest shows our record unless it is missing (gone). A fleet-wide blip or a registry
        // restart must not turn into a publish by every agent.
        void this.publish();
      },
      change: (_kind, agent) => {
        // A registry back from a backup may show an older record of ours: it gets the newest again.
        if (agent?.record?.id === this.opts.identity.id && agent.record.seq < this.seq) void this.publish();
        events.agent(agent);
      },
      removed: (id) => events.removed(id),
      // A registry that resumed us by digest without our record (restored from a backup, say) gets it again.
      gone: (id) => (id === this.opts.identity.id ? void this.publish() : events.gone(id)),
      policy: (view) => events.policy(view),
      connected: () => {
        if (!this.registryUp) {
          log.info({}, 'registry connected');
          this.opts.audit('registry.connected', this.opts.network, {});
        }
        this.registryUp = true;
      },
      disconnected: (err) => {
        if (this.registryUp) {
          log.warn({ err: err.message }, 'registry unreachable; tunnels keep working, retrying');
          this.opts.audit('registry.outage', this.opts.network, { message: clip(err.message) });
        }
        this.registryUp = false;
      },
    }, from, held);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    await this.opts.client.leave().then(
      () => this.opts.audit('registry.left', this.opts.network, {}),
      (e) => this.opts.audit('registry.leave-failed', this.opts.network, { message: clip((e as Error).message) }),
    );
  }
}
