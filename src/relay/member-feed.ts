import type { AllowHook, Networks } from './hello-gate.js';
import type { RelayLog } from './protocol.js';

/**
 * A standalone relay's allow list, following a registry's membership (`agentvpn relay
 * --registry URL ...`): for each network, the Ed25519 keys of its members, re-read every
 * MEMBER_REFRESH_MS. The relay asks the hook before it checks a hello's signature (an in-memory
 * lookup), and asks again for every session after each change, so a removed agent loses its
 * session at the next refresh. While the registry cannot be read, the last list it gave is kept
 * (established relaying goes on); before the first list, nobody is allowed.
 *
 * The relay does not import the registry: the command gives it one `list` function per network.
 */

/** How often the member lists are re-read: a removed agent keeps its session at most this long (plus the relay's 5 s sweep). */
export const MEMBER_REFRESH_MS = 10_000;
/**
 * A hello from a key we do not know may be a member that just joined: it makes the lists be
 * re-read early, at most this often (a flood of strangers' hellos costs the registry one read per 2 s).
 */
export const EARLY_REFRESH_MS = 2_000;

export interface MemberSource {
  network: string;
  /** The network's members' current Ed25519 public keys (32 bytes each). */
  list(): Promise<Uint8Array[]>;
}

export class MemberFeed {
  private readonly byNetwork = new Map<string, Set<string>>();
  private byEdKey = new Map<string, Networks>();
  private timer: NodeJS.Timeout | null = null;
  private refreshing: Promise<void> | null = null;
  private lastReadAt = -Infinity;
  /** Whether every network's list was read at least once. */
  loaded = false;

  /** `onChange`: the allowed keys changed (the relay's recheck, so removed keys lose their sessions now). */
  constructor(private readonly sources: readonly MemberSource[], private readonly log: RelayLog, private readonly onChange: () => void = () => {}) {}

  readonly hook: AllowHook = (edPub) => {
    const networks = this.byEdKey.get(Buffer.from(edPub.buffer, edPub.byteOffset, edPub.length).toString('latin1'));
    if (networks) return networks;
    if (this.timer && Date.now() - this.lastReadAt >= EARLY_REFRESH_MS) void this.refresh(); // its retry finds it
    return null;
  };

  /** Keys allowed now, over all networks. */
  get size(): number {
    return this.byEdKey.size;
  }

  /** Reads every network's list once (one read at a time); a network whose list cannot be read keeps its previous one. */
  refresh(): Promise<void> {
    this.refreshing ??= this.readAll().finally(() => (this.refreshing = null));
    return this.refreshing;
  }

  private async readAll(): Promise<void> {
    this.lastReadAt = Date.now();
    let changed = false;
    for (const s of this.sources) {
      let keys: Uint8Array[];
      try {
        keys = await s.list();
      } catch (err) {
        this.log.warn({ event: 'members-unreadable', network: s.network, err: (err as Error).message }, `cannot read the members of ${s.network}; keeping the last list`);
        continue;
      }
      const next = new Set(keys.filter((k) => k.length === 32).map((k) => Buffer.from(k).toString('latin1')));
      const before = this.byNetwork.get(s.network);
      if (!before || before.size !== next.size || [...next].some((k) => !before.has(k))) changed = true;
      this.byNetwork.set(s.network, next);
    }
    this.loaded = this.sources.every((s) => this.byNetwork.has(s.network));
    if (!changed) return;
    const byEdKey = new Map<string, string[]>();
    for (const [network, keys] of this.byNetwork) for (const k of keys) (byEdKey.get(k) ?? byEdKey.set(k, []).get(k)!).push(network);
    this.byEdKey = byEdKey;
    this.log.info({ event: 'members', keys: byEdKey.size, networks: [...this.byNetwork.keys()] }, `relay members: ${byEdKey.size} key(s)`);
    this.onChange();
  }

  start(): void {
    this.timer ??= setInterval(() => void this.refresh(), MEMBER_REFRESH_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
