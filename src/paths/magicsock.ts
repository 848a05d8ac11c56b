import type { Device, Logger } from '../wireguard/device.js';
import type { Bind } from '../wireguard/bind.js';
import type { Endpoint } from '../wireguard/endpoint.js';
import { ENDPOINT_SIZE, endpointKey, formatEndpoint, sameEndpoint } from '../net/endpoint.js';
import { TokenBucket } from '../util/token-bucket.js';
import { DiscoCodec, isDisco, isFreshCounter, newTxid, type DiscoMessage } from './disco.js';
import { PeerPath } from './peer-path.js';
import { InboundRelayed, OutboundMixed, RELAY_SLOT } from './relayed-batch.js';
import { birthday as BT, discoBudget, paths as T } from './constants.js';
import { MAX_PACKET_SIZE, PACKET_HEADER_SIZE, encodeSend } from '../relay/protocol.js';
import { singleRelay, type RelayLink, type RelayRouter } from './relay-links.js';
import { BirthdayProber, type ProbeSocket, type ProbeSocketFactory } from './birthday.js';

/** The native calls the socket layer needs (src/tun/native.ts in the daemon, fakes in tests). */
export interface UdpPort {
  send(slab: Buffer, offsets: Int32Array, lens: Int32Array, addrs: Buffer, count: number): number;
}

export type StunHandler = (buf: Buffer, off: number, len: number, src: Buffer, srcOff: number) => boolean;

export interface PingReply {
  seq: number;
  path: 'direct' | 'relay';
  endpoint: string;
  rttMs: number;
}

interface PendingPing {
  path: PeerPath;
  /** Direct endpoint pinged, or null when the ping went through the relay. */
  endpoint: Buffer | null;
  sentAt: number;
  resolve?: (reply: { endpoint: Buffer | null; rttMs: number }) => void;
  /** The extra (birthday) socket it went out of; null: the main socket. Its pong must come back there. */
  via: ProbeSocket | null;
  /** A birthday probe: its pong makes a path only when there is none (other hits must not move it off the one socket). */
  spray: boolean;
}

/** Whether a datagram is WireGuard's: a message type 1..4 as a little-endian u32 (the device checks sizes). */
function isWireGuard(buf: Buffer, off: number, len: number): boolean {
  const type = buf[off];
  return len >= 4 && type >= 1 && type <= 4 && buf[off + 1] === 0 && buf[off + 2] === 0 && buf[off + 3] === 0;
}

/**
 * The agent's UDP socket, and WireGuard's Bind (like Tailscale's magicsock): it owns the socket's
 * batches, keeps disco, relay frames and STUN for itself and hands the device WireGuard only. A
 * fleet peer's endpoint is its PeerPath, resolved at each send: its direct path when disco found
 * one, else the relay. The first packets go through the relay at once, disco pings probe every
 * candidate from both sides (which also punches holes in NATs), and the peer moves to the best
 * direct path when one answers, back to the relay when it stops answering.
 */
export class MagicSock implements Bind {
  private device: Device | null = null;
  /** The relay links: each relayed peer's packets go through its home relay's. */
  private relays: RelayRouter | null = null;
  private codec: DiscoCodec | null = null;
  private readonly byKey = new Map<string, PeerPath>();
  /** Paths by their direct address (18 bytes as latin1): who a handshake from there is. */
  private readonly byDirect = new Map<string, PeerPath>();
  private readonly pending = new Map<string, PendingPing>();
  private readonly out = new OutboundMixed();
  private sendAddrs = Buffer.alloc(0);
  private relayed: InboundRelayed | null = null;
  private relayedFlushQueued = false;
  /** The last path a relayed packet came from: most come in runs from one peer. */
  private lastRelayedFrom: PeerPath | null = null;
  private timer: NodeJS.Timeout | null = null;
  private localCandidates: Buffer[] = [];
  stunHandler: StunHandler | null = null;
  readonly stats = {
    discoIn: 0, discoOut: 0, discoRejected: 0, discoShed: 0, discoReplayed: 0, relayedIn: 0, relayedOut: 0, relayDropped: 0,
    /** Datagrams on our port that are neither WireGuard, disco, relay frames nor STUN answers. */
    malformed: 0,
  };
  private readonly discoTotal = new TokenBucket(discoBudget.total.rate, discoBudget.total.burst);
  private readonly oneOffsets = Int32Array.of(0);
  private readonly oneLens = new Int32Array(1);
  /** Hard-NAT probing (birthday.ts): its pings go out through sendPing, its sockets' datagrams come in through receiveVia. */
  readonly birthday = new BirthdayProber<PeerPath>({
    ping: (path, to, via) => this.sendPing(path, to, Date.now(), undefined, via, true),
    receive: (sock, slab, slot, lens, addrs, count) => this.receiveVia(sock, slab, slot, lens, addrs, count),
  });
  /** Whether our NAT's mapping varies by destination (netcheck; null: not known), and our public endpoint as STUN saw it. */
  private natHard: boolean | null = null;
  private publicEndpoint: Buffer | null = null;
  /** Peers whose birthday request waits for their relay's word on their address. */
  private readonly askingRelay = new Set<PeerPath>();

  /** Told when a peer's path moves to direct or back to the relay (the audit log records it). */
  onPathChange: ((wgKey: Buffer, change: { kind: 'direct' | 'relay'; endpoint: string; rttUs?: number; reason?: string }) => void) | null = null;

  constructor(private readonly udp: UdpPort, private readonly log: Logger) {}

  attach(device: Device): void {
    this.device = device;
  }

  /** Fleet mode: disco sealed with our WireGuard key, and the relays to fall back on (or one relay for all). */
  enablePaths(codec: DiscoCodec, relays: RelayRouter | RelayLink | null): void {
    this.codec = codec;
    this.relays = relays === null || 'linkFor' in relays ? relays : singleRelay(relays);
    this.timer ??= setInterval(() => this.tick(Date.now()), T.tickMs);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.birthday.stop();
  }

  /** What netcheck found: birthday probing is for a symmetric NAT (hard role) and an endpoint-independent one (easy role). */
  setNat(hard: boolean | null, publicEndpoint: Buffer | null): void {
    this.natHard = hard;
    this.publicEndpoint = publicEndpoint && Buffer.from(publicEndpoint);
  }

  /** Where the hard role's extra sockets come from (the daemon's native sockets); none: we never take that role. */
  setProbeSockets(factory: ProbeSocketFactory | null): void {
    this.birthday.setSocketFactory(factory);
  }

  /** The birthday prober's counters, for status. */
  birthdayStats(): Record<string, number> {
    const b = this.birthday.stats;
    return { birthdayAttempts: b.attempts, birthdaySuccesses: b.successes, birthdayGivenUp: b.givenUp, birthdayProbes: b.probesSent, birthdayDeferred: b.probesDeferred, birthdayRefused: b.refused, birthdaySockets: b.socketsOpen };
  }

  setLocalCandidates(list: Buffer[]): void {
    this.localCandidates = list;
  }

  // ---- Bind: sending --------------------------------------------------------------------------

  send(slab: Buffer, offsets: Int32Array, lens: Int32Array, endpoints: readonly Endpoint[], count: number): number {
    if (this.sendAddrs.length < count * ENDPOINT_SIZE) this.sendAddrs = Buffer.alloc(count * ENDPOINT_SIZE);
    const addrs = this.sendAddrs;
    for (let i = 0; i < count; i++) {
      const direct = endpoints[i].direct;
      // A path through an extra (birthday) socket is not the main socket's either.
      if (direct === null || (endpoints[i] as PeerPath).socket) return this.sendMixed(slab, offsets, lens, endpoints, count);
      direct.copy(addrs, i * ENDPOINT_SIZE);
    }
    return this.udp.send(slab, offsets, lens, addrs, count);
  }

  endpointAt(addrs: Buffer, aOff: number): Endpoint | null {
    return this.byDirect.size === 0 ? null : this.byDirect.get(endpointKey(addrs, aOff)) ?? null;
  }

  /**
   * A batch with packets for peers without a direct path. Over the relay's UDP link each becomes a
   * SEND frame in a slab we keep, and goes out in the same sendmmsg as the direct ones; over TCP (or
   * with the relay down) frames go one by one. Nothing is allocated per packet or per batch.
   */
  private sendMixed(slab: Buffer, offsets: Int32Array, lens: Int32Array, endpoints: readonly Endpoint[], count: number): number {
    const now = Date.now();
    const out = this.out.reserve(count);
    const relays = this.relays;
    let n = 0;
    let sentAlone = 0;
    for (let i = 0; i < count; i++) {
      const ep = endpoints[i];
      const via = (ep as PeerPath).socket;
      if (via && ep.direct) {
        // A path through an extra (birthday) socket: the run of packets to it goes in one sendmmsg there.
        let end = i + 1;
        while (end < count && endpoints[end] === ep) end++;
        for (let k = 0; k < end - i; k++) ep.direct.copy(this.sendAddrs, k * ENDPOINT_SIZE);
        sentAlone += via.send(slab, offsets.subarray(i, end), lens.subarray(i, end), this.sendAddrs, end - i);
        i = end - 1;
        continue;
      }
      // Only a path has no direct address: it goes through its home relay's link; without a relay its first candidate is the best guess.
      const relay = ep.direct === null && relays ? relays.linkFor(ep as PeerPath, now) : null;
      const direct = ep.direct ?? (relay ? null : (ep as PeerPath).candidates[0] ?? null);
      if (direct !== null) {
        out.offsets[n] = offsets[i];
        out.lens[n] = lens[i];
        direct.copy(out.addrs, n * ENDPOINT_SIZE);
        out.from[n++] = 0;
        continue;
      }
      const path = ep as PeerPath;
      const packet = slab.subarray(offsets[i], offsets[i] + lens[i]);
      let ok = false;
      if (relay && relay.state === 'udp' && packet.length <= MAX_PACKET_SIZE) {
        const at = i * RELAY_SLOT;
        encodeSend(path.wgKey, packet, out.frames, at);
        out.offsets[n] = at;
        out.lens[n] = PACKET_HEADER_SIZE + packet.length;
        relay.endpoint.copy(out.addrs, n * ENDPOINT_SIZE);
        out.from[n++] = 1;
        ok = true;
      } else if (relay?.send(path.wgKey, packet)) {
        sentAlone++;
        ok = true;
      }
      if (ok) {
        this.stats.relayedOut++;
        path.lastRelayedSendAt = now;
      } else {
        this.stats.relayDropped++;
      }
      // Traffic on the relay is the cue to look for a direct path (rate-limited).
      this.probeSoon(path, now);
    }
    return sentAlone + (n > 0 ? this.sendTwoSlabs(slab, out, n) : 0);
  }

  /** Sends a batch whose packets live in the caller's slab (from 0) or in our frame slab (from 1): one sendmmsg per run. */
  private sendTwoSlabs(slab: Buffer, out: OutboundMixed, n: number): number {
    let sent = 0;
    for (let start = 0; start < n; ) {
      let end = start + 1;
      while (end < n && out.from[end] === out.from[start]) end++;
      const src = out.from[start] === 1 ? out.frames : slab;
      sent += this.udp.send(src, out.offsets.subarray(start, end), out.lens.subarray(start, end), out.addrs.subarray(start * ENDPOINT_SIZE, end * ENDPOINT_SIZE), end - start);
      start = end;
    }
    return sent;
  }

  /** Traffic that is not direct is the cue to look for a direct path (at most once a second). */
  private probeSoon(path: PeerPath, now: number): void {
    if (now - path.lastProbeAt < T.probeOnTrafficMs) return;
    path.lastProbeAt = now;
    process.nextTick(() => this.probe(path, Date.now()));
  }

  // ---- Bind: receiving ------------------------------------------------------------------------

  /**
   * A batch from the UDP reader: slot i at i * slot, source at addrs[i * 20]. Disco, relay frames
   * and STUN are handled here and their slots emptied; the device gets the WireGuard datagrams, and
   * then what the relay frames in the batch carried.
   */
  receive(slab: Buffer, slot: number, lens: Int32Array, addrs: Buffer, count: number): void {
    let wireguard = 0;
    for (let i = 0; i < count; i++) {
      const off = i * slot;
      if (isWireGuard(slab, off, lens[i])) {
        wireguard++;
        continue;
      }
      if (!this.handleControl(slab, off, lens[i], addrs, i * ENDPOINT_SIZE)) this.stats.malformed++;
      lens[i] = 0;
    }
    if (wireguard > 0) this.device?.handleUdpBatch(slab, slot, lens, addrs, count);
    this.flushRelayed();
  }

  /**
   * A batch from one of the birthday prober's extra sockets: disco goes through the same budgets
   * as on the main socket (and must be from the peer the socket probes for), WireGuard to the
   * device (which authenticates it); nothing else is accepted there (no STUN, no relay frames).
   */
  private receiveVia(sock: ProbeSocket, slab: Buffer, slot: number, lens: Int32Array, addrs: Buffer, count: number): void {
    let wireguard = 0;
    for (let i = 0; i < count; i++) {
      const off = i * slot;
      if (isWireGuard(slab, off, lens[i])) {
        wireguard++;
        continue;
      }
      if (isDisco(slab, off, lens[i])) this.receiveDisco(slab.subarray(off, off + lens[i]), addrs.subarray(i * ENDPOINT_SIZE, (i + 1) * ENDPOINT_SIZE), null, sock);
      else this.stats.malformed++;
      lens[i] = 0;
    }
    if (wireguard > 0) this.device?.handleUdpBatch(slab, slot, lens, addrs, count);
  }

  private handleControl(buf: Buffer, off: number, len: number, addrs: Buffer, aOff: number): boolean {
    if (isDisco(buf, off, len)) {
      this.receiveDisco(buf.subarray(off, off + len), addrs.subarray(aOff, aOff + ENDPOINT_SIZE), null);
      return true;
    }
    const relay = this.relays?.linkAt(addrs, aOff);
    if (relay && relay.handleDatagram(buf, off, len)) return true;
    return this.stunHandler?.(buf, off, len, addrs, aOff) ?? false;
  }

  /** A packet another agent sent us through the relay (both buffers valid for this call only). */
  onRelayedPacket(srcWgKey: Buffer, packet: Buffer): void {
    if (isDisco(packet, 0, packet.length)) {
      this.receiveDisco(packet, null, srcWgKey);
      return;
    }
    const path = this.relayedSender(srcWgKey);
    const device = this.device;
    if (!path || !device) {
      this.stats.relayDropped++;
      return;
    }
    if (this.relayed?.slot !== device.tunSlotSize) this.relayed = new InboundRelayed(device.tunSlotSize);
    if (!this.relayed.add(packet, path)) {
      this.stats.relayDropped++;
      return;
    }
    this.stats.relayedIn++;
    if (this.relayed.full) this.flushRelayed();
    else if (!this.relayedFlushQueued) {
      // Frames from the relay's TCP link arrive outside a UDP batch: hand them over once this turn's are in.
      this.relayedFlushQueued = true;
      queueMicrotask(() => this.flushRelayed());
    }
  }

  private relayedSender(wgKey: Buffer): PeerPath | undefined {
    const last = this.lastRelayedFrom;
    if (last !== null && last.wgKey.equals(wgKey)) return last;
    const path = this.byKey.get(wgKey.toString('latin1'));
    if (path) this.lastRelayedFrom = path;
    return path;
  }

  /** Hands the gathered relayed packets to the device as one batch. */
  private flushRelayed(): void {
    this.relayedFlushQueued = false;
    const batch = this.relayed;
    if (!batch || batch.count === 0) return;
    const n = batch.count;
    batch.count = 0;
    this.device?.handleUdpBatch(batch.slab, batch.slot, batch.lens, batch.addrs, n, batch.via);
  }

  // ---- fleet peers ----------------------------------------------------------------------------

  /** Registers or updates a peer's candidates and home relay; returns its endpoint for WireGuard (the same object for the peer's life). */
  upsertPeer(wgKey: Buffer, candidates: Buffer[], homeRelay: string | null = null): PeerPath {
    const id = wgKey.toString('latin1');
    let path = this.byKey.get(id);
    if (!path) {
      path = new PeerPath(Buffer.from(wgKey));
      this.byKey.set(id, path);
    }
    path.homeRelay = homeRelay;
    if (path.setCandidates(candidates) || path.lastProbeAt === -Infinity) {
      const p = path;
      process.nextTick(() => this.probe(p, Date.now()));
    }
    return path;
  }

  removePeer(wgKey: Buffer): void {
    const path = this.byKey.get(wgKey.toString('latin1'));
    if (!path) return;
    this.byKey.delete(wgKey.toString('latin1'));
    this.setDirect(path, null);
    this.birthday.forget(path);
    if (this.lastRelayedFrom === path) this.lastRelayedFrom = null;
    this.codec?.forget(wgKey);
  }

  pathOf(wgKey: Uint8Array): ReturnType<PeerPath['describe']> | null {
    const path = this.byKey.get(Buffer.from(wgKey).toString('latin1'));
    return path?.describe(this.relays?.nameFor(path) ?? null) ?? null;
  }

  /** Disco pings over the peer's current path, like `tailscale ping`. */
  async ping(wgKey: Uint8Array, count: number, timeoutMs = 2000): Promise<(PingReply | { seq: number; timeout: true })[]> {
    const path = this.byKey.get(Buffer.from(wgKey).toString('latin1'));
    if (!path) return [];
    if (!path.direct) this.probe(path, Date.now()); // look for a direct path while we ping
    const out: (PingReply | { seq: number; timeout: true })[] = [];
    for (let seq = 1; seq <= count; seq++) {
      const reply = await new Promise<{ endpoint: Buffer | null; rttMs: number } | null>((resolve) => {
        const timer = setTimeout(() => resolve(null), timeoutMs);
        this.sendPing(path, path.direct, Date.now(), (r) => {
          clearTimeout(timer);
          resolve(r);
        });
      });
      out.push(reply
        ? { seq, path: reply.endpoint ? 'direct' : 'relay', endpoint: reply.endpoint ? formatEndpoint(reply.endpoint) : this.relays?.nameFor(path) ?? 'relay', rttMs: Math.round(reply.rttMs * 100) / 100 }
        : { seq, timeout: true });
      if (seq < count) await new Promise((r) => setTimeout(r, T.pingCommandIntervalMs));
    }
    return out;
  }

  // ---- disco ------------------------------------------------------------------------------------

  private sendDisco(path: PeerPath, to: Buffer | null, m: DiscoMessage, via: ProbeSocket | null = null): void {
    const msg = this.codec?.seal(path.wgKey, m);
    if (!msg) return;
    this.stats.discoOut++;
    if (to === null) {
      this.relays?.linkFor(path, Date.now())?.send(path.wgKey, msg);
      return;
    }
    this.oneLens[0] = msg.length;
    (via ?? this.udp).send(msg, this.oneOffsets, this.oneLens, to, 1);
  }

  private sendPing(path: PeerPath, to: Buffer | null, now: number, resolve?: PendingPing['resolve'], via: ProbeSocket | null = null, spray = false): void {
    const txid = newTxid();
    path.awaitReply();
    // A ping of the direct path goes the way the path's packets go.
    if (!via && to && path.socket && path.direct && sameEndpoint(to, 0, path.direct, 0)) via = path.socket;
    this.pending.set(txid.toString('hex'), { path, endpoint: to && Buffer.from(to), sentAt: performance.now(), resolve, via, spray });
    if (to) {
      path.lastDirectPingAt = now;
      if (path.direct && sameEndpoint(to, 0, path.direct, 0)) path.directUnansweredSince ??= now;
    }
    this.sendDisco(path, to, { type: 'ping', txid }, via);
  }

  /** Pings every candidate directly and asks the peer (through the relay) to ping ours. */
  private probe(path: PeerPath, now: number): void {
    if (!this.codec || !this.byKey.has(path.wgKey.toString('latin1'))) return;
    path.lastProbeAt = now;
    for (const c of path.candidates) this.sendPing(path, c, now);
    if (this.relays) {
      this.sendDisco(path, null, { type: 'call-me-maybe', candidates: this.localCandidates });
      this.sendPing(path, null, now);
    }
  }

  private receiveDisco(msg: Buffer, from: Buffer | null, relayedFrom: Buffer | null, via: ProbeSocket | null = null): void {
    // Only peers we know get a Diffie-Hellman: a stranger's key costs nothing and is not cached.
    // Through the relay, the sender the relay authenticated must be the key that sealed it; on an
    // extra socket, the peer it probes for.
    const fromKey = msg.subarray(1, 33);
    const path = this.byKey.get(fromKey.toString('latin1'));
    if (!path || (relayedFrom && !relayedFrom.equals(fromKey)) || (via && !this.birthday.owns(path, via))) {
      this.stats.discoRejected++;
      return;
    }
    // Budgets before the AEAD: a flood claiming this peer's key from elsewhere spends only its own.
    // Answers to our own pings come first: each ping we sent lets one message from where the peer is
    // expected past the budgets, so a flood (even one that spends the total) cannot make a working
    // path look dead. Only an attacker who spoofs the peer's own endpoint could spend that allowance.
    const expected = path.isExpectedSource(from);
    const awaited = expected && path.takeAwaitedReply();
    if (!awaited && (!(expected ? path.discoExpected : path.discoElsewhere).take() || !this.discoTotal.take())) {
      this.stats.discoShed++;
      return;
    }
    const opened = this.codec?.open(msg, 0, msg.length);
    if (!opened) {
      this.stats.discoRejected++;
      return;
    }
    const now = Date.now();
    if (!isFreshCounter(opened.counter, now) || !path.discoReplay.accept(opened.counter)) {
      this.stats.discoReplayed++;
      return;
    }
    const m = opened.message;
    // The allowance is for answers: anything else it let in goes back to it (the peer's own ping may
    // come just before the pong we wait for) and pays the budgets now. (Each ping back grants one,
    // so a member's stream of pings, its source forged, would else never be budgeted.) What fails
    // to open or is a replay keeps it spent: else a spoofer at the peer's address could have
    // messages opened without end.
    if (awaited && m.type !== 'pong') {
      path.awaitReply();
      if (!path.discoExpected.take() || !this.discoTotal.take()) {
        this.stats.discoShed++;
        return;
      }
    }
    this.stats.discoIn++;
    if (m.type === 'ping') {
      this.sendDisco(path, from, { type: 'pong', txid: m.txid, observed: from ?? Buffer.alloc(ENDPOINT_SIZE) }, via);
      if (from) {
        path.addCandidate(from);
        // They reached us directly: ping back along the same way to confirm the path for us, at
        // most once a second per address (a pong and a ping per ping would double what a forged source gets).
        if (!path.direct && path.mayPingUnasked(from, now, T.pingBackEveryMs)) this.sendPing(path, from, now, undefined, via);
      }
    } else if (m.type === 'pong') {
      this.receivePong(path, m.txid, from, now, via);
    } else if (m.type === 'birthday') {
      this.receiveBirthday(path, m.answer, m.publicEndpoint, now);
    } else if (now - path.lastCallMeMaybeAt >= T.probeOnTrafficMs) {
      // At most once a second per peer, and each address at most once per 5 s: a member's
      // call-me-maybes naming others' addresses cannot make us a ping cannon.
      path.lastCallMeMaybeAt = now;
      for (const c of m.candidates) path.addCandidate(c);
      for (const c of path.candidates) if (path.mayPingUnasked(c, now, T.callMeMaybePingEveryMs)) this.sendPing(path, c, now);
    }
  }

  private receivePong(path: PeerPath, txid: Buffer, from: Buffer | null, now: number, via: ProbeSocket | null): void {
    const key = txid.toString('hex');
    const ping = this.pending.get(key);
    if (!ping || ping.path !== path) return;
    this.pending.delete(key);
    const rtt = performance.now() - ping.sentAt;
    ping.resolve?.({ endpoint: ping.endpoint, rttMs: rtt });
    if (!ping.endpoint) {
      path.relayRttMs = rtt;
      return;
    }
    if (!from || !sameEndpoint(from, 0, ping.endpoint, 0)) return; // answered from elsewhere: not this path
    if (ping.via !== via || (ping.spray && path.direct)) return; // a pong must come back to the socket its ping left
    // The same address through another of our sockets is not a better path: behind a symmetric NAT
    // each socket has its own public port, and the peer sends to the one it knows (moving would
    // close that socket under its traffic). A dead path is given up first, then probed afresh.
    if (path.direct && sameEndpoint(path.direct, 0, from, 0) && path.socket !== via) return;
    const better = !path.direct || sameEndpoint(path.direct, 0, from, 0) || rtt < path.directRttMs * T.betterRttFactor;
    if (!better) return;
    const upgraded = !path.direct || !sameEndpoint(path.direct, 0, from, 0);
    if (upgraded) this.setDirect(path, Buffer.from(from), via);
    path.directRttMs = rtt;
    path.lastDirectPongAt = now;
    path.directUnansweredSince = null;
    if (upgraded) {
      this.log.info({ peer: path.wgKey.toString('base64'), endpoint: formatEndpoint(from), rttMs: Math.round(rtt * 100) / 100 }, 'direct path');
      this.onPathChange?.(path.wgKey, { kind: 'direct', endpoint: formatEndpoint(from), rttUs: Math.round(rtt * 1000) });
    }
  }

  /** Moves a path to a direct address (through `via`, an extra socket, or the main one), or (null) back to the relay; the next send goes there. */
  private setDirect(path: PeerPath, direct: Buffer | null, via: ProbeSocket | null = null): void {
    if (path.direct && this.byDirect.get(endpointKey(path.direct, 0)) === path) this.byDirect.delete(endpointKey(path.direct, 0));
    // A direct path ends a birthday attempt (keeping the socket it uses); back on the relay, an extra socket is closed.
    if (direct) this.birthday.succeeded(path, via);
    else this.birthday.release(path);
    path.socket = direct ? via : null;
    path.noDirectSince = null;
    path.direct = direct;
    if (direct) this.byDirect.set(endpointKey(direct, 0), path);
    else path.directRttMs = Infinity;
  }

  // ---- birthday probing (hard NATs) ---------------------------------------------------------------

  /**
   * Hard role: our NAT is symmetric and disco found no direct path in BT.startAfterMs of traffic;
   * ask the peer (through the relay) to take the easy role. Its answer starts our probing.
   */
  private maybeAskBirthday(path: PeerPath, now: number): void {
    path.noDirectSince ??= now;
    if (this.natHard !== true || !this.publicEndpoint || !this.relays || now - path.noDirectSince < BT.startAfterMs) return;
    if (!this.birthday.canStart(path, 'hard')) return;
    this.birthday.noteAsked(path);
    this.sendDisco(path, null, { type: 'birthday', answer: false, publicEndpoint: this.publicEndpoint });
  }

  /**
   * A peer's birthday message: a request (we are the easy side) or the answer to ours (we are the
   * hard side). Only while we want a path to the peer, and within the prober's budgets.
   */
  private receiveBirthday(path: PeerPath, answer: boolean, theirs: Buffer, now: number): void {
    if (path.direct || !this.isActive(path, now)) {
      this.birthday.stats.refused++;
      return;
    }
    if (answer) {
      // Their answer to our request: their exact public endpoint must be one they published or we saw.
      if (this.natHard !== true || !this.birthday.askedRecently(path) || !path.candidates.some((c) => sameEndpoint(c, 0, theirs, 0))) {
        this.birthday.stats.refused++;
        return;
      }
      if (this.birthday.startHard(path, theirs)) this.log.info({ peer: path.wgKey.toString('base64'), target: formatEndpoint(theirs) }, 'birthday probing (hard side)');
      return;
    }
    // Their request: useful only when our mapping is endpoint-independent.
    if (this.natHard !== false || !this.publicEndpoint || !this.birthday.canStart(path, 'easy')) {
      this.birthday.stats.refused++;
      return;
    }
    if (this.askingRelay.has(path)) {
      this.birthday.stats.refused++; // one question to the relay per peer at a time
      return;
    }
    this.askingRelay.add(path);
    void this.startEasyAtObserved(path, theirs).finally(() => this.askingRelay.delete(path));
  }

  /**
   * The easy side sprays random ports of one IP, so that IP must be one the member cannot choose.
   * What its request, record or call-me-maybe names is only a claim; the relay the peer is reached
   * through tells where it sees the peer's session come from (proven by a round trip there:
   * relay/protocol.ts, PEER_ADDR), and we probe only when the two agree. A relay that cannot tell
   * (older, not connected, the peer not on it) means no probing: the relay carries the traffic.
   */
  private async startEasyAtObserved(path: PeerPath, claimed: Buffer): Promise<void> {
    const confirmed = (await this.relays?.linkFor(path, Date.now())?.confirmsPeerAddress?.(path.wgKey, claimed)) ?? false;
    const peer = path.wgKey.toString('base64');
    if (!confirmed) {
      this.birthday.stats.refused++;
      this.birthday.noteRefused(path);
      this.log.debug({ peer, claimed: formatEndpoint(claimed) }, 'birthday request refused: the relay does not see the peer at its address');
      return;
    }
    if (!this.byKey.has(path.wgKey.toString('latin1')) || path.direct || !this.publicEndpoint) {
      this.birthday.stats.refused++;
      return;
    }
    if (!this.birthday.startEasy(path, claimed)) return; // back-off or too many attempts (counted there)
    this.log.info({ peer, target: formatEndpoint(claimed) }, 'birthday probing (easy side)');
    this.sendDisco(path, null, { type: 'birthday', answer: true, publicEndpoint: this.publicEndpoint });
  }

  /** Whether the device exchanged packets with the peer recently (we want a path to it). */
  private isActive(path: PeerPath, now: number): boolean {
    const peer = this.device?.getPeer(path.wgKey);
    return !!peer && now - Math.max(peer.lastSentAt, peer.lastReceivedAt, path.lastRelayedSendAt) < T.activeWindowMs;
  }

  // ---- timers -----------------------------------------------------------------------------------

  private tick(now: number): void {
    const t = performance.now();
    for (const [k, p] of this.pending) if (t - p.sentAt > T.pingTimeoutMs) this.pending.delete(k);
    this.birthday.tick();
    for (const path of this.byKey.values()) {
      const peer = this.device?.getPeer(path.wgKey);
      const active = !!peer && now - Math.max(peer.lastSentAt, peer.lastReceivedAt, path.lastRelayedSendAt) < T.activeWindowMs;
      // Dead = pinged and unanswered for a while. An idle peer is not pinged, so its path is kept.
      if (path.direct && path.directUnansweredSince !== null && now - path.directUnansweredSince > T.directDeadAfterMs) {
        this.log.warn({ peer: path.wgKey.toString('base64'), endpoint: formatEndpoint(path.direct) }, 'direct path stopped answering; using the relay');
        this.onPathChange?.(path.wgKey, { kind: 'relay', endpoint: formatEndpoint(path.direct), reason: 'the direct path stopped answering' });
        this.setDirect(path, null);
        path.directUnansweredSince = null;
        if (active) this.probe(path, now);
        continue;
      }
      if (!active) {
        path.noDirectSince = null;
        if (path.direct && now - path.lastDirectPongAt > T.idleTrustMs) {
          this.log.debug({ peer: path.wgKey.toString('base64') }, 'idle direct path no longer trusted; relay until traffic confirms it');
          this.setDirect(path, null);
        }
        continue;
      }
      if (path.direct && now - path.lastDirectPingAt >= T.directPingIntervalMs) this.sendPing(path, path.direct, now);
      if (!path.direct) this.maybeAskBirthday(path, now);
      const interval = path.direct ? T.reprobeWhenDirectMs : T.reprobeWhenRelayedMs;
      if (now - path.lastProbeAt >= interval) this.probe(path, now);
    }
  }
}
