/**
 * Join tokens seen valid lately, so that a join need not ask the store about its token before its
 * signature is checked (on PostgreSQL, a round trip per join). It is only the filter in front of
 * the signature check: admit() checks and takes the token in one statement, so a token used up,
 * expired or revoked meanwhile is still refused there, and then forgotten here. What the filter
 * decides is who may cost us a signature check: a stranger needs a token that was valid within
 * the last TTL_MS.
 */

/** Long enough to cover a fleet joining with one token; short against a token that ran out. */
const TTL_MS = 10_000;
/** Tokens held at once (a token is a network and a hash): the oldest goes first. */
const MAX_TOKENS = 1_024;

export class RecentTokens {
  private readonly validUntil = new Map<string, number>();

  has(network: string, hash: string, now: number): boolean {
    const key = keyOf(network, hash);
    const until = this.validUntil.get(key);
    if (until === undefined) return false;
    if (until > now) return true;
    this.validUntil.delete(key);
    return false;
  }

  add(network: string, hash: string, now: number): void {
    const key = keyOf(network, hash);
    this.validUntil.delete(key); // re-inserted last: Map order is the age order
    this.validUntil.set(key, now + TTL_MS);
    if (this.validUntil.size > MAX_TOKENS) this.validUntil.delete(this.validUntil.keys().next().value!);
  }

  forget(network: string, hash: string): void {
    this.validUntil.delete(keyOf(network, hash));
  }
}

const keyOf = (network: string, hash: string) => `${network}\n${hash}`;
