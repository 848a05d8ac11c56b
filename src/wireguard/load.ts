import {
  UNDER_LOAD_HANDSHAKES_PER_SECOND, UNDER_LOAD_HOLD_TIME, HANDSHAKES_PER_SECOND_PER_IP, HANDSHAKE_BURST_PER_IP,
} from './constants.js';

/**
 * Decides when the device is "under load" (too many handshake messages to afford a
 * Diffie-Hellman for each), and then rate-limits handshakes per source IP with token buckets.
 */
export class HandshakeLoad {
  private windowStart = 0;
  private inWindow = 0;
  private underLoadUntil = 0;
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  /** `alwaysUnderLoad` is a test-only switch to exercise the cookie path with real peers. */
  constructor(private readonly alwaysUnderLoad = false) {}

  /** Counts one handshake message; true when cookies (mac2) must be demanded. */
  record(now: number): boolean {
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.inWindow = 0;
      if (now >= this.underLoadUntil) this.buckets.clear();
      // Under sustained load, forget sources that went quiet so the map stays bounded.
      else for (const [ip, b] of this.buckets) if (now - b.at > 1000) this.buckets.delete(ip);
    }
    if (++this.inWindow > UNDER_LOAD_HANDSHAKES_PER_SECOND) this.underLoadUntil = now + UNDER_LOAD_HOLD_TIME;
    return this.alwaysUnderLoad || now < this.underLoadUntil;
  }

  /** Token bucket per source IP (`ip` is its address bytes as a string key). */
  allow(ip: string, now: number): boolean {
    let b = this.buckets.get(ip);
    if (!b) {
      b = { tokens: HANDSHAKE_BURST_PER_IP, at: now };
      this.buckets.set(ip, b);
    }
    b.tokens = Math.min(HANDSHAKE_BURST_PER_IP, b.tokens + ((now - b.at) / 1000) * HANDSHAKES_PER_SECOND_PER_IP);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}
