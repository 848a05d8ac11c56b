import { randomInt } from 'node:crypto';

/**
 * A fixed-size flow table in preallocated typed arrays (no allocation per packet): open addressing
 * where a key lives in one of WINDOW slots from its hash, so a lookup reads at most WINDOW slots,
 * deletions need no tombstones and the cost per packet is bounded whatever the table holds.
 *
 * A key is KEY_WORDS 32-bit words the caller writes into `key` before find/insert:
 *
 * | word | holds                                                                   |
 * | ---- | ----------------------------------------------------------------------- |
 * | 0    | family << 24 | kind: IP protocol (0..255), or FRAGMENT_KIND + protocol   |
 * | 1    | local port << 16 | remote port (echo: identifier << 16; fragment: ID)  |
 * | 2..5 | local address (IPv4: word 2 only)                                       |
 * | 6..9 | remote address                                                          |
 *
 * Entries also hold the peer they belong to (a slot number, never 0), the policy generation they
 * were last checked against, and when they expire. Full: a flow takes the slot in its window that
 * expires soonest; a fragment entry only takes a free or expired slot or another fragment's,
 * and fragments hold at most `maxFragments` slots, so a peer sending first fragments cannot push
 * out flows.
 */
export const KEY_WORDS = 10;
/** Slots a key may live in: 8 keeps a miss to 8 tag compares while a table ~90 % full still has room. */
export const WINDOW = 8;
export const FRAGMENT_KIND = 0x100;

export class FlowTable {
  readonly key = new Uint32Array(KEY_WORDS);
  readonly capacity: number;
  private readonly keys: Uint32Array;
  private readonly tags: Uint32Array;
  private readonly peers: Uint32Array;
  private readonly gens: Uint32Array;
  private readonly expires: Float64Array;
  private readonly fragmentFlags: Uint8Array;
  /** TCP flows that saw FIN or RST: their expiry only ever moves closer. */
  private readonly closing: Uint8Array;
  private readonly seed = randomInt(0x7fffffff);
  private fragments = 0;
  size = 0;
  evicted = 0;

  /** `capacity` is rounded up to a power of two. */
  constructor(capacity: number, private readonly maxFragments: number) {
    let c = WINDOW;
    while (c < capacity) c *= 2;
    this.capacity = c;
    this.keys = new Uint32Array(c * KEY_WORDS);
    this.tags = new Uint32Array(c);
    this.peers = new Uint32Array(c);
    this.gens = new Uint32Array(c);
    this.expires = new Float64Array(c);
    this.fragmentFlags = new Uint8Array(c);
    this.closing = new Uint8Array(c);
  }

  /** Hash of `key` (murmur3-style mixing with a per-table random seed); never 0. */
  private hash(): number {
    let h = this.seed;
    const k = this.key;
    for (let i = 0; i < KEY_WORDS; i++) {
      let w = Math.imul(k[i], 0xcc9e2d51);
      w = (w << 15) | (w >>> 17);
      h ^= Math.imul(w, 0x1b873593);
      h = (h << 13) | (h >>> 19);
      h = (Math.imul(h, 5) + 0xe6546b64) | 0;
    }
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    return (h >>> 0) || 1;
  }

  private sameKey(slot: number): boolean {
    const base = slot * KEY_WORDS;
    const k = this.key;
    for (let i = 0; i < KEY_WORDS; i++) if (this.keys[base + i] !== k[i]) return false;
    return true;
  }

  /** The slot holding `key` for this peer and not yet expired, or -1 (expired entries are freed). */
  find(peer: number, now: number): number {
    const tag = this.hash();
    const mask = this.capacity - 1;
    for (let i = 0; i < WINDOW; i++) {
      const slot = (tag + i) & mask;
      if (this.tags[slot] !== tag || !this.sameKey(slot)) continue;
      if (this.expires[slot] <= now || this.peers[slot] !== peer) {
        if (this.expires[slot] <= now) this.remove(slot);
        return -1;
      }
      return slot;
    }
    return -1;
  }

  /** Stores `key` (or refreshes it); returns its slot, or -1 when a fragment found no room. */
  insert(peer: number, gen: number, expiresAt: number, now: number, fragment: boolean): number {
    const tag = this.hash();
    const mask = this.capacity - 1;
    let free = -1;
    let victim = -1;
    for (let i = 0; i < WINDOW; i++) {
      const slot = (tag + i) & mask;
      if (this.tags[slot] === tag && this.sameKey(slot)) {
        this.peers[slot] = peer;
        this.gens[slot] = gen;
        this.expires[slot] = expiresAt;
        return slot;
      }
      if (free < 0 && (this.tags[slot] === 0 || this.expires[slot] <= now)) free = slot;
      if (this.tags[slot] !== 0 && (!fragment || this.fragmentFlags[slot]) && (victim < 0 || this.expires[slot] < this.expires[victim])) victim = slot;
    }
    let slot = free;
    if (slot < 0) {
      if (victim < 0) return -1;
      slot = victim;
      this.evicted++;
    }
    if (this.tags[slot] !== 0) this.remove(slot);
    if (fragment && this.fragments >= this.maxFragments) return -1;
    this.tags[slot] = tag;
    this.keys.set(this.key, slot * KEY_WORDS);
    this.peers[slot] = peer;
    this.gens[slot] = gen;
    this.expires[slot] = expiresAt;
    this.fragmentFlags[slot] = fragment ? 1 : 0;
    this.closing[slot] = 0;
    if (fragment) this.fragments++;
    this.size++;
    return slot;
  }

  remove(slot: number): void {
    if (this.tags[slot] === 0) return;
    if (this.fragmentFlags[slot]) this.fragments--;
    this.tags[slot] = 0;
    this.fragmentFlags[slot] = 0;
    this.size--;
  }

  generationOf(slot: number): number {
    return this.gens[slot];
  }

  setGeneration(slot: number, gen: number): void {
    this.gens[slot] = gen;
  }

  /** Moves a flow's expiry; once closing, to at most `closingExpiresAt`. */
  touch(slot: number, expiresAt: number, closingExpiresAt: number, closes: boolean): void {
    if (closes && !this.closing[slot]) {
      this.closing[slot] = 1;
      this.expires[slot] = closingExpiresAt;
      return;
    }
    this.expires[slot] = this.closing[slot] ? Math.min(this.expires[slot], closingExpiresAt) : expiresAt;
  }

  /** Word 0 or 1 of the key stored in a slot (the filter re-checks a flow's protocol and port). */
  keyWord(slot: number, word: number): number {
    return this.keys[slot * KEY_WORDS + word];
  }
}
