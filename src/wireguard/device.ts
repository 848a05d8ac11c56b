import { AllowedIps } from './allowedips.js';
import { DEVICE_DROP_REASONS, zeroCounters, type DeviceDropReason } from './counters.js';
import { ENDPOINT_SIZE, endpointKey } from '../net/endpoint.js';
import type { Bind, TunDevice } from './bind.js';
import { UdpEndpoint, type Endpoint } from './endpoint.js';
import { HandshakeGate } from './handshake-gate.js';
import type { PacketFilter } from './packet-filter.js';
import { Keypair } from './keypair.js';
import {
  Handshake, LocalIdentity, consumeInitiation, consumeResponse, createInitiation, createResponse, deriveSessionKeys, type SessionKeys,
} from './noise.js';
import { Peer, type PeerOptions } from './peer.js';
import { runPeerTimers, type TimerActions } from './timers.js';
import {
  COOKIE_REPLY_SIZE, INITIATION_SIZE, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT,
  REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES, RESPONSE_SIZE,
  TRANSPORT_HEADER_SIZE, TRANSPORT_MIN_SIZE, timers,
} from './constants.js';
import { randomFill } from '../crypto/aead.js';
import { EventLimit } from '../util/event-limit.js';
import { OpenBatch, SealBatch } from '../crypto/aead-batch.js';
import type { Prefix } from '../ip/prefix.js';

export interface Logger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

const silent: Logger = { info() {}, warn() {}, debug() {} };

export interface DeviceOptions {
  privateKey: Uint8Array;
  mtu: number;
  /** Where WireGuard datagrams go and come from (the path layer). */
  bind: Bind;
  tun: TunDevice;
  /** Most packets handled per batch in either direction. */
  batchSize: number;
  log?: Logger;
  /** Test-only: demand cookies on every handshake, to exercise the under-load path. */
  alwaysUnderLoad?: boolean;
  /** The policy in the data path (src/policy/filter.ts); without one, every packet passes. */
  filter?: PacketFilter;
  /** A peer's first session since it was added (the audit log records it; called once per peer, off the packet path). */
  onFirstHandshake?: (peer: Peer, isInitiator: boolean) => void;
}

/** A session index maps to a peer's pending handshake (keypair null) or to one of its keypairs. */
interface IndexEntry {
  peer: Peer;
  keypair: Keypair | null;
}

const EMPTY = Buffer.alloc(0);

/** Bytes of padding so the encrypted length is a multiple of 16, but never beyond the MTU. */
function paddedLength(len: number, mtu: number): number {
  const rounded = (len + 15) & ~15;
  return Math.min(rounded, Math.max(mtu, len));
}

/** At most 5 roaming lines per peer and 50 in all per minute: enough to follow a real move. */
const ROAM_LOG_LIMITS = { perKey: 5, total: 50, windowMs: 60_000, maxKeys: 1024 };

/** No timer of the peer can come due until something happens to it. */
function isAtRest(peer: Peer): boolean {
  const kp = peer.keypairs;
  return peer.handshakeAttemptStartedAt === null && peer.unansweredSince === null && peer.persistentKeepalive === 0 &&
    kp.current === null && kp.next === null && kp.previous === null;
}

function keyHex(key: Uint8Array): string {
  return Buffer.from(key).toString('hex');
}

/**
 * The WireGuard device: cryptokey routing between a TUN batch and UDP batches, the handshake
 * state machine and timers. It owns no sockets; all I/O goes through the Bind and the TunDevice in batches.
 */
export class Device {
  local: LocalIdentity;
  readonly allowedIps = new AllowedIps<Peer>();
  readonly dropped: Record<DeviceDropReason, number> = zeroCounters(DEVICE_DROP_REASONS);
  private readonly peers = new Map<string, Peer>();
  private readonly indices = new Map<number, IndexEntry>();
  /** Peers by their endpoint: plain addresses by their 18 address+port bytes (latin1), path-chosen ones by identity. */
  private readonly byAddress = new Map<string, Peer>();
  private readonly byEndpoint = new Map<Endpoint, Peer>();
  private readonly gate: HandshakeGate;
  private readonly bind: Bind;
  private readonly tun: TunDevice;
  private readonly filter: PacketFilter | null;
  private readonly log: Logger;
  private readonly onFirstHandshake: DeviceOptions['onFirstHandshake'];
  readonly mtu: number;

  // Outbound batch (TUN -> UDP): sealed packets, one slot each, sealed with one call.
  private readonly sealSlot: number;
  private readonly sealSlab: Buffer;
  private readonly sealOffsets: Int32Array;
  private readonly sealLens: Int32Array;
  private readonly sealEndpoints: Endpoint[];
  private readonly sealBatch: SealBatch;
  // Inbound batch (UDP -> TUN): transport messages opened in place with one call, then checked
  // in arrival order; the TUN write takes the plaintexts where they lie (offset + 16).
  private readonly openBatch: OpenBatch;
  private readonly openEntries: (IndexEntry | null)[];
  private readonly openCounters: Float64Array;
  private readonly openAddrOffsets: Int32Array;
  private readonly openVia: (Endpoint | null)[];
  private readonly tunOffsets: Int32Array;
  private readonly tunLens: Int32Array;
  // Keepalives and staged packets, sealed one at a time off the batch path.
  private readonly sealSingle = new SealBatch(1);
  // Single sends (handshakes, keepalives, flushed queues).
  private readonly oneOffsets = Int32Array.of(0);
  private readonly oneLens = new Int32Array(1);
  private readonly oneEndpoint: Endpoint[] = [];

  private readonly pendingFlush = new Map<Peer, boolean>();
  /**
   * Peers whose timers can come due. A peer at rest (no session, no handshake under way, nothing
   * unanswered, no persistent keepalive) leaves it until a packet or a handshake brings it back,
   * so the tick costs nothing for idle peers.
   */
  private readonly timed = new Set<Peer>();
  /** Roaming lines written per peer and in total (ROAM_LOG_LIMITS). */
  private readonly roamLog = new EventLimit(ROAM_LOG_LIMITS);
  private tickTimer: NodeJS.Timeout | null = null;

  constructor(opts: DeviceOptions) {
    this.local = new LocalIdentity(opts.privateKey);
    this.gate = new HandshakeGate(this.local.publicKey, opts.alwaysUnderLoad, this.dropped, (budgetMs) => this.processHandshakes(budgetMs),
      (reply, to) => this.sendOne(reply, to));
    this.bind = opts.bind;
    this.tun = opts.tun;
    this.filter = opts.filter ?? null;
    this.log = opts.log ?? silent;
    this.onFirstHandshake = opts.onFirstHandshake;
    this.mtu = opts.mtu;
    const n = opts.batchSize;
    this.sealSlot = (opts.mtu + TRANSPORT_MIN_SIZE + 16 + 63) & ~63;
    this.sealSlab = Buffer.alloc(n * this.sealSlot);
    this.sealOffsets = new Int32Array(n);
    this.sealLens = new Int32Array(n);
    this.sealEndpoints = [];
    this.sealBatch = new SealBatch(n);
    for (let i = 0; i < n; i++) this.sealOffsets[i] = i * this.sealSlot;
    this.openBatch = new OpenBatch(n);
    this.openEntries = new Array<IndexEntry | null>(n).fill(null);
    this.openCounters = new Float64Array(n);
    this.openAddrOffsets = new Int32Array(n);
    this.openVia = new Array<Endpoint | null>(n).fill(null);
    this.tunOffsets = new Int32Array(n);
    this.tunLens = new Int32Array(n);
  }

  /** Bytes a TUN read slot needs: the packet plus room to pad it in place. */
  get tunSlotSize(): number {
    return this.sealSlot;
  }

  start(): void {
    const interval = Math.max(10, Math.min(100, timers.rekeyTimeout / 20));
    this.tickTimer = setInterval(() => this.tick(Date.now()), interval);
  }

  stop(): void {
    if (this.tickTimer) clearInterval(this.tickTimer);
    this.tickTimer = null;
    this.gate.clear();
    for (const peer of this.peers.values()) this.expireSessions(peer);
  }

  // ---- peers -------------------------------------------------------------------------------

  addPeer(opts: PeerOptions & { allowedIps: Prefix[] }): Peer {
    const id = keyHex(opts.publicKey);
    if (this.peers.has(id)) throw new Error(`peer ${Buffer.from(opts.publicKey).toString('base64')} already exists`);
    const peer = new Peer(this.local, { ...opts, endpoint: null });
    this.peers.set(id, peer);
    if (opts.endpoint) this.setEndpoint(peer, opts.endpoint);
    for (const p of opts.allowedIps) this.allowedIps.insert(p, peer);
    this.timed.add(peer);
    return peer;
  }

  removePeer(publicKey: Uint8Array): void {
    const peer = this.peers.get(keyHex(publicKey));
    if (!peer) return;
    this.expireSessions(peer);
    this.allowedIps.removeValue(peer);
    this.timed.delete(peer);
    if (peer.endpoint) this.forgetEndpoint(peer);
    this.peers.delete(keyHex(publicKey));
  }

  /** Points the peer at a new endpoint (from config, the registry, the path layer, or roaming). */
  setEndpoint(peer: Peer, endpoint: Endpoint): void {
    if (peer.endpoint === endpoint) return;
    if (peer.endpoint) this.forgetEndpoint(peer);
    peer.endpoint = endpoint;
    this.byEndpoint.set(endpoint, peer);
    if (endpoint instanceof UdpEndpoint) this.byAddress.set(endpointKey(endpoint.direct, 0), peer);
  }

  private forgetEndpoint(peer: Peer): void {
    const ep = peer.endpoint!;
    if (this.byEndpoint.get(ep) === peer) this.byEndpoint.delete(ep);
    if (ep instanceof UdpEndpoint && this.byAddress.get(endpointKey(ep.direct, 0)) === peer) this.byAddress.delete(endpointKey(ep.direct, 0));
  }

  /** The peer a datagram came from, by its endpoint: relayed (`via`) or at its direct address. */
  private senderOf(addrs: Buffer, aOff: number, via: Endpoint | null): Peer | undefined {
    if (via) return this.byEndpoint.get(via);
    const known = this.byAddress.get(endpointKey(addrs, aOff));
    if (known) return known;
    const path = this.bind.endpointAt(addrs, aOff);
    return path ? this.byEndpoint.get(path) : undefined;
  }

  /**
   * Our static key changed (a key rotation). Sessions in flight keep working until they expire or
   * the peer replaces us; new handshakes use the new key (handshakes half-way are abandoned).
   */
  setPrivateKey(privateKey: Uint8Array): void {
    this.local = new LocalIdentity(privateKey);
    this.gate.setPublicKey(this.local.publicKey);
    for (const peer of this.peers.values()) {
      const pending = this.indices.get(peer.handshake.localIndex);
      if (pending && pending.peer === peer && pending.keypair === null) this.indices.delete(peer.handshake.localIndex);
      peer.handshake = peer.handshake.forLocal(this.local);
      peer.handshakeAttemptStartedAt = null;
      peer.nextRetransmitAt = Infinity;
    }
  }

  /**
   * A new preshared key for the peer (wg set): the next handshake uses it, sessions in flight go
   * on (as in wireguard-go); a handshake half-way is abandoned, its retries continue with the new key.
   */
  setPresharedKey(peer: Peer, presharedKey: Uint8Array): void {
    if (Buffer.from(peer.handshake.presharedKey).equals(Buffer.from(presharedKey))) return;
    const pending = this.indices.get(peer.handshake.localIndex);
    if (pending && pending.peer === peer && pending.keypair === null) this.indices.delete(peer.handshake.localIndex);
    peer.handshake = new Handshake(this.local, peer.publicKey, presharedKey);
  }

  /** A keepalive now: persistent keepalive was just turned on, so the NAT mapping opens at once. */
  keepaliveNow(peer: Peer): void {
    this.timed.add(peer);
    this.sendKeepalive(peer, Date.now());
  }

  getPeer(publicKey: Uint8Array): Peer | undefined {
    return this.peers.get(keyHex(publicKey));
  }

  allPeers(): Peer[] {
    return [...this.peers.values()];
  }

  // ---- outbound: TUN -> UDP ------------------------------------------------------------------

  /** Packets read from the TUN: slot i at i * slotSize, `lens[i]` bytes; slots need padding room. */
  handleTunBatch(slab: Buffer, slotSize: number, lens: Int32Array, count: number): void {
    const now = Date.now();
    this.sealBatch.clear(); // what a batch that threw half-way left behind refers to another slab
    for (let i = 0; i < count; i++) {
      const off = i * slotSize;
      const len = lens[i];
      const peer = this.routeOutbound(slab, off, len);
      if (!peer) continue;
      if (this.filter !== null && !this.filter.outbound(peer, slab, off, len, now)) {
        peer.dropped.policyRejected++;
        this.answerRejected(this.filter, slab, off, len);
        continue;
      }
      if (!peer.endpoint) {
        peer.dropped.noEndpoint++;
        continue;
      }
      const kp = peer.keypairs.current;
      if (!kp || !this.usableForSending(kp, now)) {
        peer.stage(slab, off, len);
        this.initiateHandshake(peer, now, false);
        continue;
      }
      const n = this.sealBatch.count;
      const size = this.queueSeal(this.sealBatch, kp, slab, off, len, this.sealOffsets[n]);
      this.sealLens[n] = size;
      this.sealEndpoints[n] = peer.endpoint;
      peer.txBytes += size;
      peer.txPackets++;
      peer.lastSentAt = now;
      if (peer.unansweredSince === null) {
        peer.unansweredSince = now;
        this.timed.add(peer);
      }
      if (kp.isInitiator && (now - kp.createdAt >= timers.rekeyAfterTime || kp.sendCounter >= REKEY_AFTER_MESSAGES)) {
        this.initiateHandshake(peer, now, false);
      }
      if (this.sealBatch.count === this.sealBatch.capacity) this.sendSealed(slab);
    }
    this.sendSealed(slab);
  }

  /** Seals the queued packets (read from `src`) with one call and sends them as one batch. */
  private sendSealed(src: Buffer): void {
    const n = this.sealBatch.count;
    if (n === 0) return;
    this.sealBatch.seal(src, this.sealSlab);
    const sent = this.bind.send(this.sealSlab, this.sealOffsets, this.sealLens, this.sealEndpoints, n);
    if (sent < n) this.dropped.sendFailed += n - sent;
  }

  /** Writes the filter's ICMP unreachable for a refused packet back to the TUN: the sender fails fast. */
  private answerRejected(filter: PacketFilter, slab: Buffer, off: number, len: number): void {
    const n = filter.rejection(slab, off, len);
    if (n === 0) return;
    this.oneLens[0] = n;
    if (this.tun.write(filter.rejectBuffer, this.oneOffsets, this.oneLens, 1) < 1) this.dropped.tunWriteFailed++;
  }

  /** The peer whose allowed IPs hold the packet's destination, or null (counted). */
  private routeOutbound(slab: Buffer, off: number, len: number): Peer | null {
    const version = len > 0 ? slab[off] >> 4 : 0;
    let peer: Peer | undefined;
    if (version === 4 && len >= 20) peer = this.allowedIps.lookupV4(slab, off + 16);
    else if (version === 6 && len >= 40) peer = this.allowedIps.lookupV6(slab, off + 24);
    else {
      this.dropped.tunMalformed++;
      return null;
    }
    if (!peer) this.dropped.noRoute++;
    return peer ?? null;
  }

  private usableForSending(kp: Keypair, now: number): boolean {
    return now - kp.createdAt < timers.rejectAfterTime && kp.sendCounter < REJECT_AFTER_MESSAGES;
  }

  /**
   * Pads `len` plaintext bytes at src[off] in place, takes the keypair's next counter and queues
   * the packet for a transport message at outOff; returns the message's size.
   */
  private queueSeal(batch: SealBatch, kp: Keypair, src: Buffer, off: number, len: number, outOff: number): number {
    const padded = paddedLength(len, this.mtu);
    if (padded > len) src.fill(0, off + len, off + padded);
    batch.add(kp.sendKey, kp.remoteIndex, kp.sendCounter++, off, padded, outOff);
    return TRANSPORT_MIN_SIZE + padded;
  }

  /** One transport message for `len` plaintext bytes at src[off], written to out[0]; returns its size. */
  private sealPacket(kp: Keypair, src: Buffer, off: number, len: number, out: Buffer): number {
    const size = this.queueSeal(this.sealSingle, kp, src, off, len, 0);
    this.sealSingle.seal(src, out);
    return size;
  }

  // ---- inbound: UDP -> TUN -------------------------------------------------------------------

  /**
   * WireGuard datagrams from the Bind: slot i at i * slotSize, `lens[i]` bytes (0: a slot the Bind
   * took for itself), sent from the direct address at addrs[i * 20] or, when `via` is given, by
   * the peer whose endpoint is via[i] along the Bind's other way (the relay).
   */
  handleUdpBatch(slab: Buffer, slotSize: number, lens: Int32Array, addrs: Buffer, count: number, via: readonly Endpoint[] | null = null): void {
    const now = Date.now();
    this.openBatch.clear(); // as for the seal batch: nothing from a batch that threw
    for (let i = 0; i < count; i++) {
      const off = i * slotSize;
      const len = lens[i];
      if (len === 0) continue;
      const aOff = i * ENDPOINT_SIZE;
      const from = via === null ? null : via[i];
      // The type is a little-endian u32 whose upper three bytes (reserved) must be zero.
      const type = len >= 4 ? slab.readUInt32LE(off) : 0;
      if (type === MESSAGE_TRANSPORT && len >= TRANSPORT_MIN_SIZE) {
        this.queueTransport(slab, off, len, addrs, aOff, from, now);
        if (this.openBatch.count === this.openBatch.capacity) this.openQueued(slab, addrs, now);
      } else if (type === MESSAGE_INITIATION && len === INITIATION_SIZE) {
        this.gate.offer(this.senderOf(addrs, aOff, from) !== undefined, slab, off, len, addrs, aOff, from, now);
      } else if (type === MESSAGE_RESPONSE && len === RESPONSE_SIZE) {
        // A response must answer an initiation of ours: one map lookup before it costs anything more.
        const entry = this.indices.get(slab.readUInt32LE(off + 8));
        if (!entry || entry.keypair) this.dropped.unknownIndex++;
        else this.gate.offer(true, slab, off, len, addrs, aOff, from, now);
      } else if (type === MESSAGE_COOKIE_REPLY && len === COOKIE_REPLY_SIZE) {
        this.receiveCookieReply(slab.subarray(off, off + len));
      } else {
        this.dropped.malformed++;
      }
    }
    this.openQueued(slab, addrs, now);
    this.flushPending(now);
  }

  /**
   * The checks a transport message passes before it may cost a decryption (a known session, not
   * expired, a counter the replay window could still accept); then it joins the open batch.
   */
  private queueTransport(slab: Buffer, off: number, len: number, addrs: Buffer, aOff: number, from: Endpoint | null, now: number): void {
    const entry = this.indices.get(slab.readUInt32LE(off + 4));
    if (!entry || !entry.keypair) {
      this.dropped.unknownIndex++;
      // A peer that restarted keeps sending under a session we no longer have; rather than wait
      // for its 15 s timeout, offer a fresh handshake if we have no session at all (so a spoofed
      // packet cannot force rekeys), rate-limited like any initiation.
      const sender = this.senderOf(addrs, aOff, from);
      if (sender && !sender.keypairs.current) this.initiateHandshake(sender, now, false);
      return;
    }
    const { peer, keypair: kp } = entry;
    const counter = slab.readUInt32LE(off + 12) * 0x1_0000_0000 + slab.readUInt32LE(off + 8);
    if (now - kp.createdAt >= timers.rejectAfterTime || counter >= REJECT_AFTER_MESSAGES) {
      peer.dropped.keypairExpired++;
      return;
    }
    if (!kp.replay.mayAccept(counter)) {
      peer.dropped.replay++;
      return;
    }
    const i = this.openBatch.add(kp.receiveKey, off, len);
    this.openEntries[i] = entry;
    this.openCounters[i] = counter;
    this.openAddrOffsets[i] = aOff;
    this.openVia[i] = from;
  }

  /** Opens the queued transport messages with one call, checks each in arrival order and writes the IP packets to the TUN. */
  private openQueued(slab: Buffer, addrs: Buffer, now: number): void {
    const batch = this.openBatch;
    const count = batch.count;
    if (count === 0) return;
    batch.open(slab);
    let n = 0;
    for (let i = 0; i < count; i++) {
      const entry = this.openEntries[i]!;
      const from = this.openVia[i];
      this.openEntries[i] = null;
      this.openVia[i] = null;
      const off = batch.offsets[i] + TRANSPORT_HEADER_SIZE;
      const plainLen = batch.lens[i] - TRANSPORT_MIN_SIZE;
      if (batch.ok[i] === 0) {
        entry.peer.dropped.decryptFailed++;
        continue;
      }
      const ipLen = this.acceptTransport(entry.peer, entry.keypair!, this.openCounters[i], slab, off, plainLen, batch.lens[i], addrs, this.openAddrOffsets[i], from, now);
      if (ipLen > 0) {
        this.tunOffsets[n] = off;
        this.tunLens[n] = ipLen;
        n++;
      }
    }
    batch.clear();
    if (n > 0) {
      const written = this.tun.write(slab, this.tunOffsets, this.tunLens, n);
      if (written < n) this.dropped.tunWriteFailed += n - written;
    }
  }

  /**
   * An authenticated transport message: the replay window, session confirmation, roaming and the
   * inner packet's checks. Returns the IP packet's length, or 0 when nothing goes to the TUN.
   */
  private acceptTransport(
    peer: Peer, kp: Keypair, counter: number, slab: Buffer, off: number, plainLen: number, len: number, addrs: Buffer, aOff: number,
    from: Endpoint | null, now: number,
  ): number {
    if (!kp.replay.accept(counter)) {
      peer.dropped.replay++;
      return 0;
    }

    peer.rxBytes += len;
    peer.rxPackets++;
    peer.lastReceivedAt = now;
    peer.unansweredSince = null;
    this.maybeRoam(peer, addrs, aOff, from);
    if (kp === peer.keypairs.next) {
      this.retire(peer.keypairs.confirmNext());
      peer.handshakeAttemptStartedAt = null;
      peer.nextRetransmitAt = Infinity;
      this.pendingFlush.set(peer, false);
    }
    if (kp.isInitiator && now - kp.createdAt >= timers.rejectAfterTime - timers.keepaliveTimeout - timers.rekeyTimeout) {
      this.initiateHandshake(peer, now, false);
    }
    if (plainLen === 0) return 0; // keepalive
    peer.lastDataReceivedAt = now;
    const ipLen = this.innerPacketLength(peer, slab, off, plainLen);
    if (ipLen < 0) return 0;
    if (this.filter !== null && !this.filter.inbound(peer, slab, off, ipLen, now)) {
      peer.dropped.policyDenied++;
      return 0;
    }
    return ipLen;
  }

  /** Validates a decrypted IP packet: well-formed and from the peer's allowed IPs. Returns its length or -1. */
  private innerPacketLength(peer: Peer, buf: Buffer, off: number, plainLen: number): number {
    const version = buf[off] >> 4;
    let total: number;
    let source: Peer | undefined;
    if (version === 4 && plainLen >= 20) {
      total = buf.readUInt16BE(off + 2);
      source = this.allowedIps.lookupV4(buf, off + 12);
    } else if (version === 6 && plainLen >= 40) {
      total = 40 + buf.readUInt16BE(off + 4);
      source = this.allowedIps.lookupV6(buf, off + 8);
    } else {
      peer.dropped.innerMalformed++;
      return -1;
    }
    if (total > plainLen || total < (version === 4 ? 20 : 40)) {
      peer.dropped.innerMalformed++;
      return -1;
    }
    if (source !== peer) {
      peer.dropped.sourceNotAllowed++;
      return -1;
    }
    return total;
  }

  /**
   * WireGuard roaming: the endpoint follows the last authenticated direct packet, as the endpoint
   * decides (a path the path layer chooses does not move). Relayed packets never move it: the
   * relay is not trusted to say who sent what.
   */
  private maybeRoam(peer: Peer, addrs: Buffer, aOff: number, from: Endpoint | null): void {
    if (from) return;
    const next = peer.endpoint ? peer.endpoint.roamed(addrs, aOff) : new UdpEndpoint(addrs, aOff);
    if (next === peer.endpoint) return;
    const was = peer.endpoint ? String(peer.endpoint) : null;
    this.setEndpoint(peer, next);
    // A peer may change its source on every packet: the log gets a few lines per peer, with a count.
    const name = this.peerName(peer);
    const logged = this.roamLog.take(name);
    if (logged) this.log.info({ peer: name, from: was, to: String(next), unloggedChanges: logged.skipped }, 'peer endpoint changed');
  }

  // ---- handshakes ----------------------------------------------------------------------------

  /** Works off queued handshake messages for up to `budgetMs` (Infinity: all of them; tests use that). */
  processHandshakes(budgetMs = Infinity): void {
    const now = Date.now();
    this.gate.drain(budgetMs, (msg, source, from) => {
      if (msg.length === INITIATION_SIZE) this.receiveInitiation(msg, source, 0, from, now);
      else this.receiveResponse(msg, source, 0, from, now);
    });
    this.flushPending(now);
  }

  private receiveInitiation(msg: Buffer, addrs: Buffer, aOff: number, from: Endpoint | null, now: number): void {
    if (!this.gate.admit(msg, addrs, aOff, from, now)) return;
    const consumed = consumeInitiation(this.local, msg, now);
    if (!consumed) {
      this.dropped.handshakeInvalid++;
      return;
    }
    const peer = this.peers.get(keyHex(consumed.remoteStatic));
    if (!peer) {
      this.dropped.unknownPeer++;
      return;
    }
    if (!consumed.apply(peer.handshake)) {
      this.dropped.handshakeInvalid++;
      return;
    }
    peer.lastReceivedAt = now;
    this.maybeRoam(peer, addrs, aOff, from);
    const response = createResponse(peer.handshake, this.newHandshakeIndex(peer))!;
    peer.cookies.addMacs(response, now);
    this.installSession(peer, deriveSessionKeys(peer.handshake)!, now);
    this.sendOne(response, peer.endpoint!);
    peer.lastSentAt = now;
    peer.lastInitiationSentAt = now; // a response counts as a handshake sent: no redundant initiation right after
  }

  private receiveResponse(msg: Buffer, addrs: Buffer, aOff: number, from: Endpoint | null, now: number): void {
    if (!this.gate.admit(msg, addrs, aOff, from, now)) return;
    const entry = this.indices.get(msg.readUInt32LE(8));
    if (!entry || entry.keypair) {
      this.dropped.unknownIndex++;
      return;
    }
    const { peer } = entry;
    if (!consumeResponse(this.local, peer.handshake, msg)) {
      this.dropped.handshakeInvalid++;
      return;
    }
    peer.lastReceivedAt = now;
    this.maybeRoam(peer, addrs, aOff, from);
    this.installSession(peer, deriveSessionKeys(peer.handshake)!, now);
    // The initiator confirms the session to the responder with data, or a keepalive if it has none.
    this.pendingFlush.set(peer, true);
  }

  private receiveCookieReply(msg: Buffer): void {
    const entry = this.indices.get(msg.readUInt32LE(4));
    if (!entry) {
      this.dropped.unknownIndex++;
      return;
    }
    if (!entry.peer.cookies.consumeReply(msg)) this.dropped.handshakeInvalid++;
  }

  /** Sends an initiation now (retry) or if none is in flight and the last is old enough. */
  private initiateHandshake(peer: Peer, now: number, retry: boolean): void {
    if (!peer.endpoint) {
      peer.dropped.noEndpoint++;
      return;
    }
    if (!retry) {
      if (peer.handshakeAttemptStartedAt !== null || now - peer.lastInitiationSentAt < timers.rekeyTimeout) return;
      peer.handshakeAttemptStartedAt = now;
    }
    const msg = createInitiation(this.local, peer.handshake, this.newHandshakeIndex(peer), now);
    peer.cookies.addMacs(msg, now);
    this.sendOne(msg, peer.endpoint);
    peer.lastSentAt = now;
    peer.lastInitiationSentAt = now;
    peer.nextRetransmitAt = now + timers.rekeyTimeout + Math.random() * timers.rekeyTimeoutJitterMax;
    this.timed.add(peer);
    this.log.debug({ peer: this.peerName(peer), retry }, 'handshake initiation sent');
  }

  /** A fresh random session index for the peer's handshake, replacing the previous one. */
  private newHandshakeIndex(peer: Peer): number {
    const old = this.indices.get(peer.handshake.localIndex);
    if (old && old.peer === peer && old.keypair === null) this.indices.delete(peer.handshake.localIndex);
    const rnd = new Uint32Array(1);
    do randomFill(new Uint8Array(rnd.buffer));
    while (rnd[0] === 0 || this.indices.has(rnd[0]));
    this.indices.set(rnd[0], { peer, keypair: null });
    return rnd[0];
  }

  private installSession(peer: Peer, keys: SessionKeys, now: number): void {
    const kp = new Keypair(keys, now);
    this.indices.set(kp.localIndex, { peer, keypair: kp });
    this.retire(peer.keypairs.install(kp));
    this.timed.add(peer);
    peer.latestHandshakeAt = now;
    peer.handshakes++;
    // Only a session we can send on ends our own attempt; a responder's `next` waits for
    // confirmation, and if our crossing initiation was lost the retransmit timer must go on.
    if (kp.isInitiator) {
      peer.handshakeAttemptStartedAt = null;
      peer.nextRetransmitAt = Infinity;
    }
    this.log.info({ peer: this.peerName(peer), initiator: kp.isInitiator }, 'handshake complete');
    if (peer.handshakes === 1) this.onFirstHandshake?.(peer, kp.isInitiator);
  }

  private retire(keypairs: Keypair[]): void {
    for (const kp of keypairs) {
      this.indices.delete(kp.localIndex);
      kp.wipe();
    }
  }

  // ---- sending outside the batch path ---------------------------------------------------------

  private sendOne(msg: Buffer, endpoint: Endpoint): void {
    this.oneLens[0] = msg.length;
    this.oneEndpoint[0] = endpoint;
    if (this.bind.send(msg, this.oneOffsets, this.oneLens, this.oneEndpoint, 1) < 1) this.dropped.sendFailed++;
  }

  /** After a session is confirmed: send what waited for it (or a keepalive when asked to). */
  private flushPending(now: number): void {
    for (const [peer, keepaliveIfEmpty] of this.pendingFlush) {
      const kp = peer.keypairs.current;
      if (!kp || !peer.endpoint) continue;
      const queue = peer.staged;
      peer.staged = [];
      if (queue.length === 0 && keepaliveIfEmpty) this.sendKeepalive(peer, now);
      for (const { buf, len } of queue) {
        const out = Buffer.allocUnsafe(len + TRANSPORT_MIN_SIZE + 16);
        const size = this.sealPacket(kp, buf, 0, len, out);
        this.sendOne(out.subarray(0, size), peer.endpoint);
        peer.txBytes += size;
        peer.txPackets++;
        peer.lastSentAt = now;
      }
    }
    this.pendingFlush.clear();
  }

  private sendKeepalive(peer: Peer, now: number): void {
    const kp = peer.keypairs.current;
    if (!kp || !peer.endpoint || !this.usableForSending(kp, now)) {
      this.initiateHandshake(peer, now, false);
      return;
    }
    const out = Buffer.allocUnsafe(TRANSPORT_MIN_SIZE);
    this.sealPacket(kp, EMPTY, 0, 0, out);
    this.sendOne(out, peer.endpoint);
    peer.txBytes += out.length;
    peer.txPackets++;
    peer.lastSentAt = now;
  }

  // ---- timers --------------------------------------------------------------------------------

  private readonly timerActions: TimerActions = {
    initiate: (peer, now, retry) => this.initiateHandshake(peer, now, retry),
    keepalive: (peer, now) => this.sendKeepalive(peer, now),
    giveUp: (peer) => {
      peer.dropped.handshakeTimeout += peer.staged.length;
      peer.staged = [];
      peer.handshakeAttemptStartedAt = null;
      peer.nextRetransmitAt = Infinity;
      this.log.warn({ peer: this.peerName(peer) }, 'handshake did not complete; giving up until there is traffic');
    },
    expire: (peer) => this.expireSessions(peer),
  };

  tick(now: number): void {
    for (const peer of this.timed) {
      runPeerTimers(peer, now, this.timerActions);
      if (isAtRest(peer)) this.timed.delete(peer);
    }
  }

  /** How many peers the tick looks at (the rest are at rest). */
  get timedPeers(): number {
    return this.timed.size;
  }

  private expireSessions(peer: Peer): void {
    this.retire(peer.keypairs.clear());
    const idx = this.indices.get(peer.handshake.localIndex);
    if (idx && idx.keypair === null) this.indices.delete(peer.handshake.localIndex);
    peer.handshake.clear();
  }

  private peerName(peer: Peer): string {
    return Buffer.from(peer.publicKey).toString('base64');
  }
}
