import { sourceKey } from '../net/endpoint.js';
import { CookieChecker } from './cookie.js';
import type { DeviceDropReason } from './counters.js';
import { UdpEndpoint, type Endpoint } from './endpoint.js';
import { HandshakeQueue } from './handshake-queue.js';
import { HandshakeLoad } from './load.js';
import { HANDSHAKE_QUEUE_KNOWN, HANDSHAKE_QUEUE_OTHERS, HANDSHAKE_TURN_BUDGET_MS } from './constants.js';

/** A handshake message that got through the gate: its bytes, its direct source, the endpoint it came by. */
export type HandshakeHandler = (msg: Buffer, source: Buffer, from: Endpoint | null) => void;

/**
 * The way in for handshake messages. They wait in a bounded queue and are worked off in turns of
 * the event loop of at most HANDSHAKE_TURN_BUDGET_MS, so the data path never waits longer than one
 * turn. Getting in costs the packet loop the cheapest checks first: room in the lane, then (outside
 * the lane of known peers' endpoints) the source's door budget, then mac1 (BLAKE2s in C, under a
 * microsecond: a flood that does not know our public key cannot take room at all), then one copy.
 * Under load, what comes out must also carry a cookie for its address (mac2) and pass per-source rates.
 */
export class HandshakeGate {
  private checker: CookieChecker;
  private readonly load: HandshakeLoad;
  private readonly queue = new HandshakeQueue(HANDSHAKE_QUEUE_KNOWN, HANDSHAKE_QUEUE_OTHERS);
  private turn: NodeJS.Immediate | null = null;

  constructor(
    publicKey: Uint8Array,
    alwaysUnderLoad: boolean | undefined,
    private readonly dropped: Record<DeviceDropReason, number>,
    /** Called in a later turn when messages wait: the device drains the gate then. */
    private readonly onWaiting: (budgetMs: number) => void,
    private readonly sendCookieReply: (reply: Buffer, to: Endpoint) => void,
  ) {
    this.checker = new CookieChecker(publicKey);
    this.load = new HandshakeLoad(alwaysUnderLoad);
  }

  /** Our static key changed: mac1 and cookies are keyed by it. */
  setPublicKey(publicKey: Uint8Array): void {
    this.checker = new CookieChecker(publicKey);
  }

  /** A message from the packet loop: queued if it passes the cheap checks, else dropped and counted. */
  offer(known: boolean, slab: Buffer, off: number, len: number, addrs: Buffer, aOff: number, from: Endpoint | null, now: number): void {
    this.load.arrived(now);
    if (!this.queue.hasRoom(known)) {
      this.dropped.handshakeShed++;
      return;
    }
    if (!known && !this.load.admitAtDoor(sourceKey(addrs, aOff))) {
      this.dropped.rateLimited++;
      return;
    }
    if (!this.checker.checkMac1(slab.subarray(off, off + len))) {
      this.dropped.badMac1++;
      return;
    }
    this.queue.push(known, slab, off, len, addrs, aOff, from);
    this.scheduleTurn();
  }

  /** Hands queued messages to `handle` for up to `budgetMs` (Infinity: all of them); what is left waits for a later turn. */
  drain(budgetMs: number, handle: HandshakeHandler): void {
    const start = performance.now();
    while (this.queue.length > 0 && performance.now() - start < budgetMs) this.queue.drain(8, handle);
    if (this.queue.length > 0) this.scheduleTurn();
  }

  /**
   * The gate at the work itself (mac1 was checked at the door): under load, mac2 must carry a
   * cookie for the sender's address (else we answer with a cookie) and per-source rates apply.
   * A relayed message needs no cookie: a cookie proves that the sender owns its address, and the
   * relay authenticated the sender's key instead; it is rate-limited per peer.
   */
  admit(msg: Buffer, addrs: Buffer, aOff: number, from: Endpoint | null, now: number): boolean {
    if (!this.load.underLoad(now, this.queue.pressure)) return true;
    if (from) {
      if (this.load.allow(from.rateKey)) return true;
      this.dropped.rateLimited++;
      return false;
    }
    const source = addrs.subarray(aOff, aOff + 18);
    if (!this.checker.checkMac2(msg, source, now)) {
      if (this.load.mayReplyCookie(sourceKey(addrs, aOff))) {
        this.sendCookieReply(this.checker.createReply(msg, source, now), new UdpEndpoint(addrs, aOff));
        this.dropped.cookieSent++;
      } else {
        this.dropped.cookieShed++;
      }
      return false;
    }
    if (!this.load.allow(sourceKey(addrs, aOff))) {
      this.dropped.rateLimited++;
      return false;
    }
    return true;
  }

  clear(): void {
    if (this.turn) clearImmediate(this.turn);
    this.turn = null;
    this.queue.clear();
  }

  private scheduleTurn(): void {
    this.turn ??= setImmediate(() => {
      this.turn = null;
      this.onWaiting(HANDSHAKE_TURN_BUDGET_MS);
    });
  }
}
