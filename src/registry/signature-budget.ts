import type { IncomingMessage } from 'node:http';
import { addressKey } from '../net/connection-guard.js';
import { refuse } from './refusals.js';

/**
 * A budget for signatures that fail to verify. Checking an Ed25519 signature is the registry's
 * most expensive step (~40 µs, more on a loaded machine), and anyone who knows a member's agent ID can send
 * requests in that member's name with made-up signatures. Honest agents' signatures verify, so
 * only failures are budgeted: a client address (IPv4, IPv6 /64) whose signatures failed
 * FAILURES_PER_ADDRESS times within the current second, or all addresses together
 * FAILURES_TOTAL times, has its signed requests refused before their signature is checked,
 * until the next second. Honest traffic, however heavy, never spends this budget.
 */

/** Failed signatures one address may cost us per second: a misconfigured agent retrying fits many times over. */
const FAILURES_PER_ADDRESS = 20;
/** Failed signatures per second from all addresses: ~0.1–0.4 s of CPU at most, so the rest keeps working. */
const FAILURES_TOTAL = 1_000;
/** Addresses remembered within one second; past it, new ones count only toward the total. */
const MAX_ADDRESSES = 10_000;
const WINDOW_MS = 1_000;

/** What a budget allows per second, and the words its refusals use. */
export interface FailureLimits {
  perAddress: number;
  total: number;
  /** e.g. "signatures that do not verify", "admin tokens that are not valid". */
  what: string;
}

const SIGNATURE_LIMITS: FailureLimits = { perAddress: FAILURES_PER_ADDRESS, total: FAILURES_TOTAL, what: 'signatures that do not verify' };

export class SignatureBudget {
  private window = 0;
  private total = 0;
  private readonly byAddress = new Map<string, number>();

  constructor(private readonly limits: FailureLimits = SIGNATURE_LIMITS) {}

  /** Runs a signature check (synchronous: ed25519.ts) within the budget: refused like check() first, a failure counted. */
  verified(req: IncomingMessage, verify: () => boolean): boolean {
    this.check(req);
    const ok = verify();
    if (!ok) this.failed(req);
    return ok;
  }

  /** Refuses (RATE_LIMITED) a signed request whose source, or everyone, spent this second's failures. */
  check(req: IncomingMessage, now = Date.now()): void {
    this.roll(now);
    const address = addressKey(req.socket.remoteAddress) ?? '';
    if ((this.byAddress.get(address) ?? 0) >= this.limits.perAddress) refuse('RATE_LIMITED', `too many requests with ${this.limits.what} came from this address`);
    if (this.total >= this.limits.total) refuse('RATE_LIMITED', `the registry is refusing such requests for a moment: too many with ${this.limits.what}`);
  }

  /** Counts a failure (a signature that did not verify, a wrong admin token). */
  failed(req: IncomingMessage, now = Date.now()): void {
    this.roll(now);
    this.total++;
    const address = addressKey(req.socket.remoteAddress) ?? '';
    const n = this.byAddress.get(address);
    if (n !== undefined || this.byAddress.size < MAX_ADDRESSES) this.byAddress.set(address, (n ?? 0) + 1);
  }

  private roll(now: number): void {
    const window = Math.floor(now / WINDOW_MS);
    if (window === this.window) return;
    this.window = window;
    this.total = 0;
    this.byAddress.clear();
  }
}
