import { SourceBuckets, TokenBucket } from '../util/token-bucket.js';
import {
  COOKIE_REPLIES_PER_SECOND, COOKIE_REPLIES_PER_SOURCE, HANDSHAKES_PER_SECOND_PER_IP, HANDSHAKE_BURST_PER_IP, HANDSHAKE_DOOR_PER_SOURCE,
  MAX_RATE_LIMITED_SOURCES,
  UNDER_LOAD_HANDSHAKES_PER_SECOND, UNDER_LOAD_HOLD_TIME, UNDER_LOAD_QUEUE_PRESSURE,
} from './constants.js';

/**
 * Decides when the device is "under load" (more handshake messages than it can afford a
 * Diffie-Hellman for each), and keeps the budgets: at the door, handshake messages per source
 * (far above what real peers send, far below a flood: most of a one-source flood is dropped for
 * the price of a map lookup); under load, handshakes per source, and cookie replies per source and
 * in total (each reply is work and a datagram we send: unbounded, they would turn us into a
 * reflector and cost the packet loop as much as the flood itself).
 */
export class HandshakeLoad {
  private windowStart = 0;
  private inWindow = 0;
  private underLoadUntil = 0;
  private readonly door = new SourceBuckets(HANDSHAKE_DOOR_PER_SOURCE.rate, HANDSHAKE_DOOR_PER_SOURCE.burst, MAX_RATE_LIMITED_SOURCES);
  private readonly handshakes = new SourceBuckets(HANDSHAKES_PER_SECOND_PER_IP, HANDSHAKE_BURST_PER_IP, MAX_RATE_LIMITED_SOURCES);
  private readonly cookies = new TokenBucket(COOKIE_REPLIES_PER_SECOND.rate, COOKIE_REPLIES_PER_SECOND.burst);
  private readonly cookiesPerSource = new SourceBuckets(COOKIE_REPLIES_PER_SOURCE.rate, COOKIE_REPLIES_PER_SOURCE.burst, MAX_RATE_LIMITED_SOURCES);

  /** `alwaysUnderLoad` is a test-only switch to exercise the cookie path with real peers. */
  constructor(private readonly alwaysUnderLoad = false) {}

  /** Counts a handshake message as it arrives (all of them: what the door sheds is load too). */
  arrived(now: number): void {
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.inWindow = 0;
    }
    if (++this.inWindow > UNDER_LOAD_HANDSHAKES_PER_SECOND) this.underLoadUntil = now + UNDER_LOAD_HOLD_TIME;
  }

  /** True when cookies (mac2) must be demanded. `queuePressure`: how full the queue's shared lane is (a backlog is load). */
  underLoad(now: number, queuePressure: number): boolean {
    if (queuePressure >= UNDER_LOAD_QUEUE_PRESSURE) this.underLoadUntil = Math.max(this.underLoadUntil, now + UNDER_LOAD_HOLD_TIME);
    return this.alwaysUnderLoad || now < this.underLoadUntil;
  }

  /** May a handshake message from this source (see endpoint.ts sourceKey) take room in the queue? */
  admitAtDoor(source: string): boolean {
    return this.door.take(source);
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
