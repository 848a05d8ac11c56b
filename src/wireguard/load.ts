import { SourceBuckets, TokenBucket } from '../util/token-bucket.js';
import {
  COOKIE_REPLIES_PER_SECOND, COOKIE_REPLIES_PER_SOURCE, HANDSHAKES_PER_SECOND_PER_IP, HANDSHAKE_BURST_PER_IP, MAX_RATE_LIMITED_SOURCES,
  UNDER_LOAD_HANDSHAKES_PER_SECOND, UNDER_LOAD_HOLD_TIME, UNDER_LOAD_QUEUE_PRESSURE,
} from './constants.js';

/**
 * Decides when the device is "under load" (more handshake messages than it can afford a
 * Diffie-Hellman for each), and keeps the budgets that then apply: handshakes per source, and
 * cookie replies per source and in total (each reply is work and a datagram we send: unbounded,
 * they would turn us into a reflector and cost the packet loop as much as the flood itself).
 */
export class HandshakeLoad {
  private windowStart = 0;
  private inWindow = 0;
  private underLoadUntil = 0;
  private readonly handshakes = new SourceBuckets(HANDSHAKES_PER_SECOND_PER_IP, HANDSHAKE_BURST_PER_IP, MAX_RATE_LIMITED_SOURCES);
  private readonly cookies = new TokenBucket(COOKIE_REPLIES_PER_SECOND.rate, COOKIE_REPLIES_PER_SECOND.burst);
  private readonly cookiesPerSource = new SourceBuckets(COOKIE_REPLIES_PER_SOURCE.rate, COOKIE_REPLIES_PER_SOURCE.burst, MAX_RATE_LIMITED_SOURCES);

  /** `alwaysUnderLoad` is a test-only switch to exercise the cookie path with real peers. */
  constructor(private readonly alwaysUnderLoad = false) {}

  /**
   * Counts one handshake message; true when cookies (mac2) must be demanded. `queuePressure` is how
   * full the handshake queue's shared lane is: a backlog means load whatever the rate says.
   */
  record(now: number, queuePressure: number): boolean {
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.inWindow = 0;
    }
    if (++this.inWindow > UNDER_LOAD_HANDSHAKES_PER_SECOND || queuePressure >= UNDER_LOAD_QUEUE_PRESSURE) {
      this.underLoadUntil = now + UNDER_LOAD_HOLD_TIME;
    }
    return this.alwaysUnderLoad || now < this.underLoadUntil;
  }

  /** Under load: may this source (see endpoint.ts sourceKey) have a handshake processed now? */
  allow(source: string): boolean {
    return this.handshakes.take(source);
  }

  /** May we answer this source with a cookie reply now? Per-source first, so one flooder cannot spend the total. */
  mayReplyCookie(source: string): boolean {
    return this.cookiesPerSource.take(source) && this.cookies.take();
  }
}
