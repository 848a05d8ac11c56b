import { encodeKey } from '../crypto/keys.js';
import { TokenBucket } from '../util/token-bucket.js';
import type { PacketFilter } from '../wireguard/packet-filter.js';
import type { Peer } from '../wireguard/peer.js';
import { PROTO_TCP, PROTO_UDP, type CompiledPolicy, type PeerRules } from './compile.js';
import { FlowTable, FRAGMENT_KIND } from './flow-table.js';
import { IcmpRejecter } from './icmp-reject.js';
import { FRAG_FIRST, FRAG_LATER, PacketView, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from './packet.js';

/**
 * The policy in the data path. The receiver is the one that enforces: a packet from a peer passes
 * if the policy grants the peer that protocol/port into us, or if it belongs to a flow we opened.
 * Flows are recorded only when WE open them (an allowed outbound packet that is not a reply), so a
 * peer, however it floods, never writes to our flow table (first fragments aside, which are capped).
 * On the way out the filter only makes refusals fail fast: packets replying to what a peer may
 * reach on us pass, new flows need an outbound grant, and refused ones get an ICMP unreachable.
 *
 * Decisions, in order:
 *
 * | direction | packet                 | passes when                                                        |
 * | --------- | ---------------------- | ------------------------------------------------------------------ |
 * | in        | later fragment         | its first fragment passed (same addresses, protocol, ID; 5 s)       |
 * | in        | ICMP error             | it quotes a packet from us to this peer's address that would pass outbound |
 * | in        | other                  | granted (protocol, destination port), or it matches a flow we opened |
 * | out       | later fragment         | its first fragment passed                                           |
 * | out       | ICMP error             | it quotes a packet from this peer's address to us that would pass inbound |
 * | out       | other                  | replies from a port the peer is granted (TCP: not a bare SYN; ICMP: echo replies); or matches a flow we opened; or an outbound grant (then recorded as a flow) |
 *
 * A new policy (setPolicy) is a swap of one reference plus a generation number: each peer's rules
 * and each flow are re-checked lazily on their next packet, so flows the new policy denies stop
 * at their next packet and sessions are untouched.
 */

/** Idle lifetimes of flows we opened. */
const TIMEOUTS = {
  /** Linux's TCP keepalive default is 2 h: a connection with keepalives on never expires here. */
  tcpMs: 2 * 3600_000,
  /** After FIN or RST: long enough for the closing handshake's last ACKs and retransmits. */
  tcpClosingMs: 30_000,
  /** Like conntrack's UDP stream timeout (120 s) with some slack for chatty-then-quiet protocols. */
  udpMs: 180_000,
  /** Echo requests and other protocols: replies come within seconds. */
  otherMs: 30_000,
  /** Fragments of one datagram arrive together; the kernel's reassembly gives up after 30 s anyway. */
  fragmentMs: 5_000,
};
/** 32 Ki flows × 62 bytes ≈ 2 MB: thousands of concurrent connections of our own. */
export const DEFAULT_FLOW_CAPACITY = 32 * 1024;
/** First-fragment entries a peer's traffic may hold: a small share, so flows always have room. */
const MAX_FRAGMENT_ENTRIES = 1024;
/** ICMP answers to refused packets: enough for every connect() a program makes, not an echo chamber. */
const REJECTS_PER_SECOND = 100;
const REJECT_BURST = 100;

export const DENY_REASONS = [
  'noGrant',     // no grant covers it and it belongs to no flow we opened
  'unknownPeer', // a peer the policy does not know (not in the compiled facts): denied everything
  'malformed',   // not a parsable IP packet, or a first fragment too short to hold its ports
  'fragment',    // a later fragment whose first fragment did not pass (or came after it)
  'icmpError',   // an ICMP error quoting a packet that would not have passed
] as const;
export type DenyReason = (typeof DENY_REASONS)[number];

interface PeerState {
  /** Never 0: flow entries belong to one peer. */
  slot: number;
  key: string;
  gen: number;
  rules: PeerRules | null;
  denied: Record<DenyReason, number>;
}

const IN = 0;
const OUT = 1;

const ALLOW_ALL: CompiledPolicy = { enforcing: false, byId: new Map(), byWgKey: new Map() };

export class PolicyFilter implements PacketFilter {
  private policy: CompiledPolicy = ALLOW_ALL;
  private gen = 1;
  private nextSlot = 1;
  private readonly peers = new WeakMap<Peer, PeerState>();
  private readonly table: FlowTable;
  private readonly view = new PacketView();
  private readonly quoted = new PacketView();
  private readonly rejecter = new IcmpRejecter();
  private readonly rejectBudget = new TokenBucket(REJECTS_PER_SECOND, REJECT_BURST);
  /** Whether the last refused outbound packet deserves an ICMP answer. */
  private rejectable = false;
  readonly stats = {
    flowsOpened: 0, flowsStopped: 0, fragmentsNoRoom: 0, rejectsSent: 0, rejectsShed: 0,
    deniedIn: 0, deniedOut: 0,
  };

  constructor(opts: { flowCapacity?: number } = {}) {
    this.table = new FlowTable(opts.flowCapacity ?? DEFAULT_FLOW_CAPACITY, MAX_FRAGMENT_ENTRIES);
  }

  get rejectBuffer(): Buffer {
    return this.rejecter.buffer;
  }

  /** Installs a new compiled policy (or none: allow all) at once; flows are re-checked lazily. */
  setPolicy(policy: CompiledPolicy | null): void {
    this.policy = policy ?? ALLOW_ALL;
    this.gen = (this.gen + 1) >>> 0 || 1;
  }

  get enforcing(): boolean {
    return this.policy.enforcing;
  }

  get flowCount(): number {
    return this.table.size;
  }

  get flowsEvicted(): number {
    return this.table.evicted;
  }

  /** Denies by reason for one peer (status). */
  deniesOf(peer: Peer): Record<DenyReason, number> | null {
    return this.peers.get(peer)?.denied ?? null;
  }

  report(): Record<string, number | boolean> {
    return { enforcing: this.enforcing, flows: this.table.size, flowCapacity: this.table.capacity, flowsEvicted: this.table.evicted, ...this.stats };
  }

  inbound(peer: Peer, buf: Buffer, off: number, len: number, now: number): boolean {
    if (!this.policy.enforcing) return true;
    this.lastBuf = buf;
    const st = this.stateOf(peer);
    const v = this.view;
    if (!v.parse(buf, off, len, false)) return this.deny(st, 'malformed', IN);
    const rules = st.rules;
    if (rules === null) return this.deny(st, 'unknownPeer', IN);
    if (v.fragment === FRAG_LATER) return this.laterFragment(st, v, IN, now) || this.deny(st, 'fragment', IN);
    let ok: boolean;
    if (v.isIcmp && v.icmpError) {
      // Even with `icmp` granted: an error must be about a packet between us and this peer, or a
      // peer could forge "fragmentation needed" or "unreachable" about our flows with others.
      ok = this.quotedPasses(st, rules, IN, now);
      if (!ok) return this.deny(st, 'icmpError', IN);
    } else {
      ok = rules.inbound.allows(v.grantProto, v.dstPort) || this.flowHit(st, rules, v, IN, now, true);
      if (!ok) return this.deny(st, 'noGrant', IN);
    }
    if (v.fragment === FRAG_FIRST) this.noteFirstFragment(st, v, IN, now);
    return true;
  }

  outbound(peer: Peer, buf: Buffer, off: number, len: number, now: number): boolean {
    if (!this.policy.enforcing) return true;
    this.rejectable = false;
    this.lastBuf = buf;
    const st = this.stateOf(peer);
    const v = this.view;
    if (!v.parse(buf, off, len, false)) return this.deny(st, 'malformed', OUT);
    const rules = st.rules;
    if (rules === null) {
      this.rejectable = true;
      return this.deny(st, 'unknownPeer', OUT);
    }
    if (v.fragment === FRAG_LATER) return this.laterFragment(st, v, OUT, now) || this.deny(st, 'fragment', OUT);
    if (v.isIcmp && v.icmpError) {
      if (!this.quotedPasses(st, rules, OUT, now)) return this.deny(st, 'icmpError', OUT);
    } else if (!this.repliesToGranted(rules, v) && !this.flowHit(st, rules, v, OUT, now, true)) {
      // (Replies first: a server's packets then cost no table lookup. A flow of ours that also
      // looks like a reply is never refreshed here, and needs not be: its answers pass inbound
      // by the grant that made it look like one.)
      if (!rules.outbound.allows(v.grantProto, v.dstPort)) {
        this.rejectable = true;
        return this.deny(st, 'noGrant', OUT);
      }
      this.openFlow(st, v, now);
    }
    if (v.fragment === FRAG_FIRST) this.noteFirstFragment(st, v, OUT, now);
    return true;
  }

  rejection(buf: Buffer, off: number, len: number): number {
    if (!this.rejectable) return 0;
    this.rejectable = false;
    const v = this.view;
    // Never answer multicast or broadcast destinations (RFC 1812 / RFC 4443).
    if (v.family === 4 ? buf[v.dstOff] >= 224 : buf[v.dstOff] === 0xff) return 0;
    if (!this.rejectBudget.take()) {
      this.stats.rejectsShed++;
      return 0;
    }
    this.stats.rejectsSent++;
    return this.rejecter.build(buf, off, len, v.family);
  }

  // ---- decisions ---------------------------------------------------------------------------

  /** Our packet answers something the peer may reach on us (a server's replies need no flow entry). */
  private repliesToGranted(rules: PeerRules, v: PacketView): boolean {
    if (v.proto === PROTO_TCP) return (v.tcpFlags & (TCP_SYN | TCP_ACK)) !== TCP_SYN && rules.inbound.allows(PROTO_TCP, v.srcPort);
    if (v.proto === PROTO_UDP) return rules.inbound.allows(PROTO_UDP, v.srcPort);
    if (v.isIcmp) return v.echoReply && (rules.inbound.icmp || rules.inbound.anyProtocol);
    return rules.inbound.anyProtocol;
  }

  /** Whether the packet an ICMP error quotes would pass the other way (no state is created). */
  private quotedPasses(st: PeerState, rules: PeerRules, dir: number, now: number): boolean {
    const outer = this.view;
    const q = this.quoted;
    const start = outer.l4Off + 8;
    if (!q.parse(this.lastBuf, start, outer.end - start, true)) return false;
    if (q.family !== outer.family || q.fragment === FRAG_LATER || (q.isIcmp && q.icmpError)) return false;
    // The quoted packet went the other way between the same two addresses.
    const b = this.lastBuf;
    const n = q.family === 4 ? 4 : 16;
    if (b.compare(b, q.srcOff, q.srcOff + n, outer.dstOff, outer.dstOff + n) !== 0) return false;
    if (b.compare(b, q.dstOff, q.dstOff + n, outer.srcOff, outer.srcOff + n) !== 0) return false;
    if (dir === IN) {
      // It quotes one of ours: would we have sent it?
      return this.flowHit(st, rules, q, OUT, now, false) || this.repliesToGranted(rules, q) || rules.outbound.allows(q.grantProto, q.dstPort);
    }
    return rules.inbound.allows(q.grantProto, q.dstPort) || this.flowHit(st, rules, q, IN, now, false);
  }

  private deny(st: PeerState, reason: DenyReason, dir: number): false {
    st.denied[reason]++;
    if (dir === IN) this.stats.deniedIn++;
    else this.stats.deniedOut++;
    return false;
  }

  // ---- flows -------------------------------------------------------------------------------

  /** The buffer of the packet being decided (set by inbound/outbound, read by quotedPasses and writeKey). */
  private lastBuf: Buffer = Buffer.alloc(0);

  private stateOf(peer: Peer): PeerState {
    let st = this.peers.get(peer);
    if (st === undefined) {
      st = { slot: this.nextSlot++, key: encodeKey(peer.publicKey), gen: 0, rules: null, denied: { noGrant: 0, unknownPeer: 0, malformed: 0, fragment: 0, icmpError: 0 } };
      this.peers.set(peer, st);
    }
    if (st.gen !== this.gen) {
      st.rules = this.policy.byWgKey.get(st.key) ?? null;
      st.gen = this.gen;
    }
    return st;
  }

  /** Writes the flow key of `v` seen in direction `dir` (local = our end) into the table's key. */
  private writeKey(v: PacketView, dir: number, fragment: boolean): void {
    const k = this.table.key;
    const b = this.lastBuf;
    k[0] = ((v.family << 24) | (fragment ? FRAGMENT_KIND | v.proto : v.proto)) >>> 0;
    if (fragment) k[1] = v.fragId;
    else if (v.echoRequest || v.echoReply) k[1] = (v.srcPort << 16) >>> 0;
    else k[1] = dir === IN ? ((v.dstPort << 16) | v.srcPort) >>> 0 : ((v.srcPort << 16) | v.dstPort) >>> 0;
    const local = dir === IN ? v.dstOff : v.srcOff;
    const remote = dir === IN ? v.srcOff : v.dstOff;
    const words = v.family === 4 ? 1 : 4;
    for (let i = 0; i < 4; i++) {
      k[2 + i] = i < words ? b.readUInt32BE(local + 4 * i) : 0;
      k[6 + i] = i < words ? b.readUInt32BE(remote + 4 * i) : 0;
    }
  }

  private lifetime(v: PacketView): number {
    if (v.proto === PROTO_TCP) return TIMEOUTS.tcpMs;
    if (v.proto === PROTO_UDP) return TIMEOUTS.udpMs;
    return TIMEOUTS.otherMs;
  }

  /** A flow we opened, still allowed by the current policy (re-checked once per policy change). */
  private flowHit(st: PeerState, rules: PeerRules, v: PacketView, dir: number, now: number, touch: boolean): boolean {
    this.writeKey(v, dir, false);
    const slot = this.table.find(st.slot, now);
    if (slot < 0) return false;
    if (this.table.generationOf(slot) !== this.gen) {
      // The flow was opened by a packet of ours that `v` belongs to: same protocol, same remote port.
      const remotePort = this.table.keyWord(slot, 1) & 0xffff;
      if (!rules.outbound.allows(v.grantProto, remotePort)) {
        this.table.remove(slot);
        this.stats.flowsStopped++;
        return false;
      }
      this.table.setGeneration(slot, this.gen);
    }
    if (touch) {
      const closes = v.proto === PROTO_TCP && (v.tcpFlags & (TCP_FIN | TCP_RST)) !== 0;
      this.table.touch(slot, now + this.lifetime(v), now + TIMEOUTS.tcpClosingMs, closes);
    }
    return true;
  }

  private openFlow(st: PeerState, v: PacketView, now: number): void {
    this.writeKey(v, OUT, false);
    const slot = this.table.insert(st.slot, this.gen, now + this.lifetime(v), now, false);
    if (slot >= 0) this.stats.flowsOpened++;
  }

  private noteFirstFragment(st: PeerState, v: PacketView, dir: number, now: number): void {
    this.writeKey(v, dir, true);
    if (this.table.insert(st.slot, this.gen, now + TIMEOUTS.fragmentMs, now, true) < 0) this.stats.fragmentsNoRoom++;
  }

  private laterFragment(st: PeerState, v: PacketView, dir: number, now: number): boolean {
    this.writeKey(v, dir, true);
    const slot = this.table.find(st.slot, now);
    if (slot < 0) return false;
    if (this.table.generationOf(slot) !== this.gen) {
      this.table.remove(slot); // a policy change: the datagram's first fragment was judged by the old one
      return false;
    }
    return true;
  }
}
