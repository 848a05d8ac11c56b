import { hash, mac, macInto } from '../crypto/blake2s.js';
import { xseal, xopen, randomFill, constantTimeEqual } from '../crypto/aead.js';
import { COOKIE_REPLY_SIZE, MESSAGE_COOKIE_REPLY, timers } from './constants.js';

/**
 * mac1/mac2 and cookie replies (whitepaper 5.4.4 and 5.4.7). mac1 proves the sender knows our
 * public key; mac2 (a MAC with a cookie bound to the sender's IP and port) is demanded only when
 * we are under load, so a flood from spoofed addresses costs us no Diffie-Hellman.
 */

const LABEL_MAC1 = new TextEncoder().encode('mac1----');
const LABEL_COOKIE = new TextEncoder().encode('cookie--');
const ZERO16 = new Uint8Array(16);

/** Offsets of mac1 and mac2 in a handshake message of the given size. */
function macOffsets(msg: Uint8Array): [number, number] {
  return [msg.length - 32, msg.length - 16];
}

/** Our side as receiver of handshakes: checks macs and writes cookie replies. */
export class CookieChecker {
  private readonly mac1Key: Uint8Array;
  private readonly cookieKey: Uint8Array;
  private secret = new Uint8Array(32);
  private secretCreatedAt = -Infinity;
  /** mac1 is checked for every handshake message that arrives: computed into this, allocating nothing. */
  private readonly scratch = new Uint8Array(16);

  constructor(ourPublicKey: Uint8Array) {
    this.mac1Key = hash(LABEL_MAC1, ourPublicKey);
    this.cookieKey = hash(LABEL_COOKIE, ourPublicKey);
  }

  checkMac1(msg: Uint8Array): boolean {
    const [m1] = macOffsets(msg);
    macInto(this.scratch, this.mac1Key, msg.subarray(0, m1));
    return constantTimeEqual(this.scratch, msg.subarray(m1, m1 + 16));
  }

  /** `source` is the sender's address bytes followed by its port: the cookie is bound to them. */
  checkMac2(msg: Uint8Array, source: Uint8Array, now = Date.now()): boolean {
    const [, m2] = macOffsets(msg);
    const cookie = this.cookieFor(source, now);
    return constantTimeEqual(mac(cookie, msg.subarray(0, m2)), msg.subarray(m2, m2 + 16));
  }

  /** A cookie reply to `msg` (an initiation or response whose mac1 was valid). */
  createReply(msg: Uint8Array, source: Uint8Array, now = Date.now()): Buffer {
    const [m1] = macOffsets(msg);
    const reply = Buffer.alloc(COOKIE_REPLY_SIZE);
    reply[0] = MESSAGE_COOKIE_REPLY;
    reply.set(msg.subarray(4, 8), 4); // the receiver is the sender of the message we answer
    const nonce = reply.subarray(8, 32);
    randomFill(nonce);
    xseal(reply.subarray(32, 64), this.cookieFor(source, now), msg.subarray(m1, m1 + 16), nonce, this.cookieKey);
    return reply;
  }

  private cookieFor(source: Uint8Array, now: number): Uint8Array {
    if (now - this.secretCreatedAt > timers.cookieRefreshTime) {
      randomFill(this.secret);
      this.secretCreatedAt = now;
    }
    return mac(this.secret, source);
  }
}

/** Our side as sender of handshakes to one peer: adds macs, remembers cookies it sends us. */
export class CookieGenerator {
  private readonly mac1Key: Uint8Array;
  private readonly cookieKey: Uint8Array;
  private cookie: Uint8Array | null = null;
  private cookieReceivedAt = -Infinity;
  private lastMac1: Uint8Array | null = null;

  constructor(peerPublicKey: Uint8Array) {
    this.mac1Key = hash(LABEL_MAC1, peerPublicKey);
    this.cookieKey = hash(LABEL_COOKIE, peerPublicKey);
  }

  addMacs(msg: Buffer, now = Date.now()): void {
    const [m1, m2] = macOffsets(msg);
    const mac1 = mac(this.mac1Key, msg.subarray(0, m1));
    msg.set(mac1, m1);
    this.lastMac1 = mac1;
    // A cookie is good for the refresh period, minus a margin for the time it spent in flight.
    const fresh = this.cookie && now - this.cookieReceivedAt < timers.cookieRefreshTime - timers.rekeyTimeout;
    msg.set(fresh ? mac(this.cookie!, msg.subarray(0, m2)) : ZERO16, m2);
  }

  /** Accepts a cookie reply answering our last handshake message. */
  consumeReply(reply: Uint8Array, now = Date.now()): boolean {
    if (reply.length !== COOKIE_REPLY_SIZE || !this.lastMac1) return false;
    const cookie = new Uint8Array(16);
    if (!xopen(cookie, reply.subarray(32, 64), this.lastMac1, reply.subarray(8, 32), this.cookieKey)) return false;
    this.cookie = cookie;
    this.cookieReceivedAt = now;
    return true;
  }
}
