import type { AuditSink } from '../audit/sink.js';
import type { Logger as PinoLogger } from 'pino';
import { AgentVpnError } from '../errors.js';
import { formatAddress, parseAddress, parsePrefix, type Prefix } from '../ip/prefix.js';
import { anyCapabilityMatches, parseCapability } from '../net/capabilities.js';
import type { AgentView } from '../registry/client.js';
import { verifyRecord, type AgentRecord } from '../registry/record.js';
import type { Daemon } from './daemon.js';
import { endpointBuffer } from './fleet-paths.js';
import { inPrefix } from './prefixes.js';

/** What `agentvpn peers` and `discover()` return for each agent. */
export interface PeerInfo {
  id: string;
  name: string;
  ipv4: string;
  ipv6: string;
  online: boolean;
  lastSeen: number;
  capabilities: string[];
  /** Given by the registry from the agent's join token (not signed by the agent). */
  tags: string[];
  endpoints: string[];
  /** The relay its record names as its home (null: none named). */
  homeRelay: string | null;
}

/** What `agentvpn whois` answers: who holds an overlay address, for servers that authorize by sender. */
export interface WhoisInfo {
  address: string;
  port: number | null;
  id: string;
  name: string;
  tags: string[];
  capabilities: string[];
  /** The app capabilities the policy's grants give this agent toward us (empty without a policy). */
  app: Record<string, unknown[]>;
  online: boolean;
}

export interface Self {
  id: string;
  name: string;
  network: string;
  ipv4: string;
  ipv6: string;
}

/** Decides whether a record that verified may become a peer (the trust store: TOFU, approval, blocks). */
export interface AdmissionGate {
  admit(view: AgentView): boolean;
}

export interface AdmissionOptions {
  daemon: Daemon;
  self: Self;
  pool: Prefix;
  log: PinoLogger;
  gate?: AdmissionGate;
  /** The app capabilities an agent's grants give it toward us (the policy, once there is one). */
  appCapabilitiesOf?: (id: string) => Record<string, unknown[]>;
  /** The admitted agents (or our own view of ourselves) changed. */
  onChange?: () => void;
  /** Peers added, re-keyed and removed go into the audit log. */
  audit?: AuditSink;
}

/** How long a snapshot's records are checked in one turn of the event loop before packets get theirs. */
const SYNC_SLICE_MS = 5;
/** A peer whose WireGuard setup failed is tried again after this, doubling up to the most. */
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 60_000;

/** A snapshot being applied: the views, the next to apply, and the agent IDs events named since (skipped). */
interface SnapshotRun {
  views: AgentView[];
  next: number;
  touched: Set<unknown>;
}

/** Whether two views of an agent carry the same record (a record changes only with its seq) and tags. */
function sameFacts(a: AgentView, b: AgentView): boolean {
  return a.record.seq === b.record.seq && tagsOf(a).join(',') === tagsOf(b).join(',');
}

/** The registry's tags of an agent; none unless they are a list of strings (they are not signed, and a policy matches on them). */
export function tagsOf(view: AgentView): string[] {
  const tags = (view as { tags?: unknown }).tags;
  return Array.isArray(tags) && tags.every((t) => typeof t === 'string') ? tags : [];
}

/** Whether two views carry the same signed record (field for field), tags and key chain: only online and lastSeen may differ. */
function sameRecord(a: AgentView, b: AgentView): boolean {
  return a.signature === b.signature && sameFacts(a, b) && JSON.stringify(a.record) === JSON.stringify(b.record)
    && JSON.stringify(a.chain ?? null) === JSON.stringify(b.chain ?? null);
}

/** `checked` (a view whose record was verified) with the liveness of `latest`: nothing else of `latest` is taken. */
function withLiveness(checked: AgentView, latest: AgentView): AgentView {
  return { ...checked, online: latest.online === true, lastSeen: Number.isFinite(latest.lastSeen) ? latest.lastSeen : checked.lastSeen };
}

/** "100.64.0.7", "100.64.0.7:8080", "fd00::7", "[fd00::7]:8080" → the address bytes and port. */
function parseAddressAndPort(text: string): { addr: Uint8Array; port: number | null } | null {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(text);
  const addr = parseAddress(m ? m[1] : text);
  const port = m ? Number(m[2]) : null;
  return addr && (port === null || port <= 65535) ? { addr, port } : null;
}

/**
 * Which agents of the fleet become WireGuard peers, routes and DNS names: only records that
 * verify (signed by the agent, addresses derived from its key, its IPv4 inside the pool and
 * not another agent's). The agents admitted are the fleet view every lookup answers from.
 */
export class Admission {
  private readonly agents = new Map<string, AgentView>();
  /** Records the gate refused, by ID: offered again by recheck() after an operator's decision. */
  private readonly held = new Map<string, AgentView>();
  /** WireGuard key (base64) → agent ID of the admitted agents. */
  private readonly idByWgKey = new Map<string, string>();
  /** IPv4 → agent ID of the admitted agents: a record claiming another's address is refused without a scan of the fleet. */
  private readonly idByIpv4 = new Map<string, string>();
  /** Lookups by name and IPv6 without a walk of the fleet (whois answers each new connection an app asks about). */
  private readonly idsByName = new Map<string, Set<string>>();
  private readonly idByIpv6 = new Map<string, string>();
  /** The registry's view of ourselves (our tags come from there). */
  selfView: AgentView | null = null;
  /** Admitted agents whose WireGuard peer could not be configured: tried again by a timer, and at their next event. */
  private readonly unconfigured = new Set<string>();
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelayMs = RETRY_MIN_MS;
  /**
   * The latest record refused because its IPv4 was another admitted agent's, by that IPv4: offered
   * again once the holder lets the address go (it moved, or was removed). Events and snapshot views
   * come in any order, so an agent that took over a rejoined agent's old address may come first.
   */
  private readonly claimedIpv4 = new Map<string, AgentView>();
  /** The snapshot being applied, if any. */
  private syncing: SnapshotRun | null = null;
  private stopped = false;

  constructor(private readonly opts: AdmissionOptions) {}

  /** An event from the registry: applied now (newer than any snapshot still being applied); a bad entry is logged and skipped, never fatal. */
  applySafely(view: AgentView): void {
    this.syncing?.touched.add(view?.record?.id);
    this.applyLogged(view);
  }

  private applyLogged(view: AgentView): void {
    this.apply(view).catch((e) => this.opts.log.error({ err: (e as Error).message }, 'ignoring agent entry that cannot be applied'));
  }

  private async apply(view: AgentView): Promise<void> {
    const { self, log, daemon } = this.opts;
    const r = view?.record;
    if (!r || this.stopped) return;
    if (r.id === self.id) {
      const changed = !this.selfView || !sameFacts(this.selfView, view);
      this.selfView = view;
      if (changed) this.opts.onChange?.();
      return;
    }
    const known = this.agents.get(r.id);
    // An online or offline event repeats the record it was checked with: only its liveness moves.
    // (Checking a record and its key chain again on every flip is what a flapping member would make every daemon pay.)
    if (known && sameRecord(known, view) && !this.unconfigured.has(r.id)) {
      this.agents.set(r.id, withLiveness(known, view));
      return;
    }
    const held = this.held.get(r.id);
    if (held && sameRecord(held, view)) {
      this.held.set(r.id, withLiveness(held, view));
      return;
    }
    const check = verifyRecord(view, { network: self.network });
    if (!check.ok) {
      log.warn({ id: r.id, problem: check.problem, detail: check.detail }, 'ignoring agent record that does not verify');
      return;
    }
    // The IPv4 is not bound to the key like the IPv6: make sure it is inside the overlay pool and
    // not another agent's, so a misbehaving registry cannot redirect traffic or add host routes.
    const holder = this.idByIpv4.get(r.ipv4);
    if (!inPrefix(r.ipv4, this.opts.pool) || r.ipv4 === self.ipv4 || (holder !== undefined && holder !== r.id)) {
      log.warn({ id: r.id, ipv4: r.ipv4 }, 'ignoring agent record whose IPv4 is outside the pool or taken');
      if (holder !== undefined && holder !== r.id) this.claimedIpv4.set(r.ipv4, view);
      return;
    }
    if (known && known.record.seq > r.seq) return;
    if (this.opts.gate && !this.opts.gate.admit(view)) {
      if (known) this.forget(r.id);
      this.held.set(r.id, view);
      return;
    }
    this.held.delete(r.id);
    // A rotated key (the gate followed its chain): the WireGuard peer under the old key goes.
    if (known && known.record.wgPublicKey !== r.wgPublicKey) {
      daemon.removePeer(Buffer.from(known.record.wgPublicKey, 'base64'));
      this.idByWgKey.delete(known.record.wgPublicKey);
    }
    const logged = !known ? this.opts.audit?.('peer.added', r.id, { name: r.name, ipv4: r.ipv4, ipv6: r.ipv6, wgPublicKey: r.wgPublicKey, tags: tagsOf(view) })
      : known.record.wgPublicKey !== r.wgPublicKey ? this.opts.audit?.('peer.rekeyed', r.id, { name: r.name, wgPublicKey: r.wgPublicKey }) : undefined;
    this.idByWgKey.set(r.wgPublicKey, r.id);
    // The name stays where it was in its index unless it changed: the agent admitted first with a name keeps it.
    if (known) this.unindex(known.record, known.record.name === r.name);
    this.index(r);
    this.agents.set(r.id, view);
    // Online/offline events repeat the record: only a new record or new tags change what others derive from it.
    if (!known || !sameFacts(known, view)) this.opts.onChange?.();
    // Logged before it takes effect: no tunnel to an agent (or a key) that the audit trail does not show.
    await logged;
    // Meanwhile it may have been removed (an operator's removal in the same stream chunk), refused
    // by the gate, or replaced by a newer record (whose own apply configures the peer): a removed
    // agent's peer, or a rotated-out key's, must not come back. A liveness event leaves the record.
    const now = this.agents.get(r.id);
    if (!now || !sameRecord(now, view)) return;
    const wgKey = Buffer.from(r.wgPublicKey, 'base64');
    const candidates = r.endpoints.map(endpointBuffer).filter((e): e is Buffer => e !== null);
    const endpoint = daemon.sock?.upsertPeer(wgKey, candidates, r.homeRelay ?? null) ?? null;
    try {
      await daemon.upsertPeer({ publicKey: wgKey, allowedIps: [parsePrefix(r.ipv4)!, parsePrefix(r.ipv6)!], endpoint });
      this.unconfigured.delete(r.id);
      if (this.unconfigured.size === 0) this.retryDelayMs = RETRY_MIN_MS;
    } catch (e) {
      // Tried again by the retry timer, and with the agent's next event (not skipped as liveness-only).
      this.unconfigured.add(r.id);
      log.error({ err: e, id: r.id }, 'configuring peer failed');
      this.scheduleRetry();
    }
  }

  /** Applies the unconfigured agents' records again after a while, backing off while setups keep failing. */
  private scheduleRetry(): void {
    if (this.retryTimer || this.stopped) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.retryDelayMs = Math.min(RETRY_MAX_MS, this.retryDelayMs * 2);
      for (const id of [...this.unconfigured]) {
        const view = this.agents.get(id);
        if (view) this.applyLogged(view);
        else this.unconfigured.delete(id);
      }
    }, this.retryDelayMs).unref();
  }

  private index(r: AgentRecord): void {
    this.idByIpv4.set(r.ipv4, r.id);
    this.idByIpv6.set(formatAddress(parseAddress(r.ipv6)!), r.id);
    let ids = this.idsByName.get(r.name);
    if (!ids) this.idsByName.set(r.name, (ids = new Set()));
    ids.add(r.id);
  }

  private unindex(r: AgentRecord, keepName = false): void {
    if (this.idByIpv4.get(r.ipv4) === r.id) {
      this.idByIpv4.delete(r.ipv4);
      // Another agent's record claimed this address while it was taken: offered again once this
      // apply is done, if the address is still free then (a republish unindexes and indexes it again).
      const claim = this.claimedIpv4.get(r.ipv4);
      if (claim && claim.record.id !== r.id) {
        queueMicrotask(() => {
          if (this.idByIpv4.has(claim.record.ipv4) || this.claimedIpv4.get(claim.record.ipv4) !== claim) return;
          this.claimedIpv4.delete(claim.record.ipv4);
          // Not over a newer record of the same agent, admitted or held by the gate.
          const newer = this.agents.get(claim.record.id) ?? this.held.get(claim.record.id);
          if (!newer || newer.record.seq < claim.record.seq) this.applyLogged(claim);
        });
      }
    }
    const v6 = formatAddress(parseAddress(r.ipv6)!);
    if (this.idByIpv6.get(v6) === r.id) this.idByIpv6.delete(v6);
    if (keepName) return;
    const ids = this.idsByName.get(r.name);
    ids?.delete(r.id);
    if (ids?.size === 0) this.idsByName.delete(r.name);
  }

  /** The first admitted agent with this name (a registry may send two; the one admitted first keeps it). */
  private byName(name: string): AgentView | undefined {
    const ids = this.idsByName.get(name);
    return ids ? this.agents.get(ids.values().next().value!) : undefined;
  }

  /** The agent a packet from `address` came from: only admitted agents are named. */
  whois(address: string): WhoisInfo {
    const parsed = parseAddressAndPort(address.trim());
    if (!parsed) throw new AgentVpnError('BAD_ADDRESS', `"${address}" is not an overlay address`, 'give an IPv4 or IPv6 address, optionally with :PORT (IPv6 as [ADDR]:PORT)');
    const text = formatAddress(parsed.addr);
    const id = parsed.addr.length === 4 ? this.idByIpv4.get(text) : this.idByIpv6.get(text);
    const a = id === undefined ? undefined : this.agents.get(id);
    if (a) {
      const r = a.record;
      return {
        address: text, port: parsed.port, id: r.id, name: r.name, tags: tagsOf(a),
        capabilities: r.capabilities, app: this.opts.appCapabilitiesOf?.(r.id) ?? {}, online: a.online,
      };
    }
    throw new AgentVpnError('NOT_AN_AGENT', `no agent of network ${this.opts.self.network} holds ${text}`,
      'whois names agents this daemon has admitted as peers; check the address with `agentvpn peers`');
  }

  /**
   * The registry's whole view (a snapshot): drops agents it no longer lists, then applies each
   * record, SYNC_SLICE_MS at a time. Admitting a new agent costs ~0.2 ms (its signature, the
   * gate, its audit entry) and the packet path shares this event loop: a snapshot of 10,000 new
   * agents at once held every tunnel for ~2 s. An event for an agent that comes meanwhile is
   * newer than the snapshot: that agent's snapshot view is skipped. A newer snapshot
   * replaces one still being applied.
   */
  sync(views: AgentView[]): void {
    if (this.stopped) return;
    const listed = new Set(views.map((v) => v?.record?.id));
    for (const id of [...this.agents.keys(), ...this.held.keys()]) if (!listed.has(id)) this.forget(id);
    // A claim of an agent the registry no longer lists (its removal missed) must not come back.
    for (const [ipv4, claim] of this.claimedIpv4) if (!listed.has(claim.record.id)) this.claimedIpv4.delete(ipv4);
    const run = { views, next: 0, touched: new Set<unknown>() };
    this.syncing = run;
    this.syncChunk(run);
  }

  private syncChunk(run: SnapshotRun): void {
    if (this.syncing !== run) return;
    const until = performance.now() + SYNC_SLICE_MS;
    while (run.next < run.views.length && performance.now() < until) {
      const view = run.views[run.next++];
      if (!run.touched.has(view?.record?.id)) this.applyLogged(view);
    }
    if (run.next < run.views.length) setImmediate(() => this.syncChunk(run));
    else this.syncing = null;
  }

  /** The daemon is stopping: what is left of a snapshot, and any record that comes later, is not applied. */
  stop(): void {
    this.stopped = true;
    this.syncing = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  /** Offers every record to the gate again (after `trust accept`, `approve`, `block`, `forget`). */
  recheck(): void {
    for (const view of [...this.held.values(), ...this.agents.values()]) this.recheckOne(view);
  }

  private recheckOne(view: AgentView): void {
    const admitted = this.agents.get(view.record.id) === view;
    if (admitted && this.opts.gate && !this.opts.gate.admit(view)) {
      this.forget(view.record.id);
      this.held.set(view.record.id, view);
    } else if (!admitted) {
      // Offered to the gate again: not the liveness-only shortcut for a record it refused before.
      this.held.delete(view.record.id);
      this.applyLogged(view);
    }
  }

  /** The registry removed or blocked an agent: no peer, no route, no name from now on. */
  remove(id: string): void {
    this.syncing?.touched.add(id);
    this.forget(id);
  }

  private forget(id: string): void {
    this.held.delete(id);
    this.unconfigured.delete(id);
    for (const [ipv4, claim] of this.claimedIpv4) if (claim.record.id === id) this.claimedIpv4.delete(ipv4);
    const view = this.agents.get(id);
    if (!view) return;
    this.agents.delete(id);
    this.opts.onChange?.();
    this.opts.daemon.removePeer(Buffer.from(view.record.wgPublicKey, 'base64'));
    this.idByWgKey.delete(view.record.wgPublicKey);
    this.unindex(view.record);
    this.opts.audit?.('peer.removed', id, { name: view.record.name });
    this.opts.log.info({ id, name: view.record.name }, 'agent removed from the fleet; peer dropped');
  }

  /** The admitted agent with this WireGuard key (base64), for the audit log's subjects. */
  idOfWgKey(wgKey: string): string | undefined {
    return this.idByWgKey.get(wgKey);
  }

  nameOf(id: string): string | undefined {
    return this.agents.get(id)?.record.name;
  }

  /** Every admitted agent's view. */
  admitted(): AgentView[] {
    return [...this.agents.values()];
  }

  peers(cap?: string): PeerInfo[] {
    const query = cap ? parseCapability(cap) : null;
    return [...this.agents.values()]
      .filter((a) => !query || anyCapabilityMatches(query, a.record.capabilities))
      .map((a) => ({
        id: a.record.id, name: a.record.name, ipv4: a.record.ipv4, ipv6: a.record.ipv6, online: a.online,
        lastSeen: a.lastSeen, capabilities: a.record.capabilities, tags: tagsOf(a), endpoints: a.record.endpoints, homeRelay: a.record.homeRelay ?? null,
      }))
      .sort((x, y) => x.name.localeCompare(y.name));
  }

  /** "worker", "worker.prod" and "worker.prod." all name the agent worker. */
  private bareName(name: string): string {
    const lower = name.toLowerCase().replace(/\.$/, '');
    const suffix = `.${this.opts.self.network}`;
    return lower.endsWith(suffix) ? lower.slice(0, -suffix.length) : lower;
  }

  private notFound(name: string): AgentVpnError {
    return new AgentVpnError('NAME_NOT_FOUND', `no agent named "${name}" in network ${this.opts.self.network}`, 'list the agents with `agentvpn peers`');
  }

  /** An admitted agent by name, IPv4 or ID. */
  findAgent(name: string): AgentView {
    const bare = this.bareName(name);
    const byIpv4 = this.idByIpv4.get(bare);
    // By ID first: a name is the agent's own word, so a member named like another's ID must not take its place.
    const a = this.agents.get(bare) ?? (byIpv4 === undefined ? undefined : this.agents.get(byIpv4)) ?? this.byName(bare);
    if (a) return a;
    throw this.notFound(name);
  }

  /** `name` or `name.<network>`; our own name resolves too. */
  lookupName(name: string): { ipv4: string; ipv6: string } | null {
    const { self } = this.opts;
    const bare = this.bareName(name);
    if (bare === self.name) return { ipv4: self.ipv4, ipv6: self.ipv6 };
    const a = this.byName(bare);
    return a ? { ipv4: a.record.ipv4, ipv6: a.record.ipv6 } : null;
  }

  resolve(name: string): { name: string; ipv4: string; ipv6: string } {
    const hit = this.lookupName(name);
    if (!hit) throw this.notFound(name);
    return { name, ipv4: formatAddress(parseAddress(hit.ipv4)!), ipv6: formatAddress(parseAddress(hit.ipv6)!) };
  }
}
