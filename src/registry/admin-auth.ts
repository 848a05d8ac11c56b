import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { refuse } from './refusals.js';
import { SignatureBudget } from './signature-budget.js';
import type { RegistryStore } from './store.js';

/**
 * Admin tokens: `Authorization: Bearer <admin token>` on /v1/admin/*. The registry keeps only
 * their SHA-256 (a copy of the database grants nothing), compares a presented token's hash with
 * every stored one in constant time, and budgets wrong tokens per client address before it
 * hashes anything, so guessing is as slow as the budget and a flood of guesses costs a lookup.
 */

/** Wrong admin tokens one address may send per second: an operator's typo fits, a guesser gets nowhere. */
const FAILURES_PER_ADDRESS = 5;
/** Wrong admin tokens per second from everyone together (a spread-out guesser). */
const FAILURES_TOTAL = 50;
/** Longer bearer texts are not our tokens ("avadm_" + 43 characters), so they are not hashed. */
const MAX_TOKEN_CHARS = 128;

function hashAdminToken(token: string): string {
  return createHash('sha256').update(`agentvpn admin token ${token}`).digest('hex');
}

/** Creates an admin token and stores its hash; the token is returned once and never kept. */
export async function createAdminToken(store: RegistryStore): Promise<string> {
  const token = `avadm_${randomBytes(32).toString('base64url')}`;
  await store.addAdminToken(hashAdminToken(token), Date.now());
  return token;
}

export class AdminTokens {
  private hashes: Buffer[] = [];
  private readonly budget = new SignatureBudget({ perAddress: FAILURES_PER_ADDRESS, total: FAILURES_TOTAL, what: 'admin tokens that are not valid' });

  constructor(private readonly store: RegistryStore) {}

  /** (Re)reads the stored hashes: at start, and when an operator created a token. */
  async load(): Promise<void> {
    this.hashes = (await this.store.adminTokenHashes()).map((h) => Buffer.from(h, 'hex'));
  }

  /** Refuses (RATE_LIMITED, UNAUTHORIZED) a request without a valid admin token; returns the token's stored hash (hex). */
  authorize(req: IncomingMessage): string {
    this.budget.check(req);
    const m = /^Bearer (\S{1,128})$/.exec((req.headers.authorization ?? '').slice(0, MAX_TOKEN_CHARS + 8));
    const presented = m ? Buffer.from(hashAdminToken(m[1]), 'hex') : null;
    let matched: Buffer | null = null;
    // Every stored hash is compared, whichever matches, so the time says nothing about which.
    for (const h of this.hashes) if (presented && timingSafeEqual(h, presented)) matched = h;
    if (matched) return matched.toString('hex');
    this.budget.failed(req);
    refuse('UNAUTHORIZED', 'the admin API needs Authorization: Bearer <admin token> (agentvpn registry admin-token create)');
  }
}
