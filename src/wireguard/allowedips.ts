import { type Prefix, networkOf, formatPrefix } from '../ip/prefix.js';

/**
 * Cryptokey routing table: longest-prefix match from an IP address to a peer.
 * One hash map per prefix length in use, probed from the longest length down: a lookup costs
 * one map probe per distinct length (usually one or two), independent of the number of peers.
 * IPv4 keys are the masked address as a number; IPv6 keys are the masked address as an
 * 8-character string of 16-bit groups.
 */

interface Family<T> {
  byLength: Map<number, Map<number | string, { prefix: Prefix; value: T }>>;
  lengths: number[]; // descending
}

function v4Key(addr: number, bits: number): number {
  return bits === 0 ? 0 : (addr & (~0 << (32 - bits))) >>> 0;
}

function v6Key(bytes: Uint8Array, offset: number, bits: number): string {
  let key = '';
  for (let g = 0; g < 8; g++) {
    const keep = Math.max(0, Math.min(16, bits - g * 16));
    const word = (bytes[offset + g * 2] << 8) | bytes[offset + g * 2 + 1];
    key += String.fromCharCode(keep === 0 ? 0 : word & (0xffff << (16 - keep)) & 0xffff);
  }
  return key;
}

function prefixKey(p: Prefix): number | string {
  if (p.family === 4) {
    const a = p.addr;
    return v4Key(((a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]) >>> 0, p.bits);
  }
  return v6Key(p.addr, 0, p.bits);
}

/** A prefix's identity within its family's tables: its length and masked address. */
function ownedKey(p: Prefix): string {
  return `${p.family}/${p.bits}/${prefixKey(p)}`;
}

export class AllowedIps<T> {
  private readonly v4: Family<T> = { byLength: new Map(), lengths: [] };
  private readonly v6: Family<T> = { byLength: new Map(), lengths: [] };
  /** Each value's prefixes (by ownedKey), so adding, removing or listing one costs its own size at most, not the table's. */
  private readonly owned = new Map<T, Map<string, Prefix>>();

  /** Maps the prefix to `value`, taking it from any other value that had it (as `wg set` does). */
  insert(prefix: Prefix, value: T): void {
    const fam = prefix.family === 4 ? this.v4 : this.v6;
    let table = fam.byLength.get(prefix.bits);
    if (!table) {
      table = new Map();
      fam.byLength.set(prefix.bits, table);
      fam.lengths = [...fam.byLength.keys()].sort((a, b) => b - a);
    }
    const key = prefixKey(prefix);
    const network = networkOf(prefix);
    const previous = table.get(key);
    if (previous) this.disown(previous.value, previous.prefix);
    table.set(key, { prefix: network, value });
    let mine = this.owned.get(value);
    if (!mine) this.owned.set(value, (mine = new Map()));
    mine.set(ownedKey(network), network);
  }

  /** Unmaps the prefix if `value` holds it (another value's equal prefix stays, as wireguard-go's remove). */
  remove(prefix: Prefix, value: T): void {
    const fam = prefix.family === 4 ? this.v4 : this.v6;
    const table = fam.byLength.get(prefix.bits);
    const key = prefixKey(prefix);
    if (table?.get(key)?.value !== value) return;
    table.delete(key);
    if (table.size === 0) this.dropLength(fam, prefix.bits);
    this.disown(value, prefix);
  }

  private disown(value: T, prefix: Prefix): void {
    const mine = this.owned.get(value);
    mine?.delete(ownedKey(prefix));
    if (mine?.size === 0) this.owned.delete(value);
  }

  private dropLength(fam: Family<T>, bits: number): void {
    fam.byLength.delete(bits);
    fam.lengths = [...fam.byLength.keys()].sort((a, b) => b - a);
  }

  removeValue(value: T): void {
    for (const prefix of this.owned.get(value)?.values() ?? []) {
      const fam = prefix.family === 4 ? this.v4 : this.v6;
      const table = fam.byLength.get(prefix.bits)!;
      table.delete(prefixKey(prefix));
      if (table.size === 0) this.dropLength(fam, prefix.bits);
    }
    this.owned.delete(value);
  }

  /** The prefixes currently owned by `value`. */
  prefixesOf(value: T): Prefix[] {
    return [...(this.owned.get(value)?.values() ?? [])].map((p) => ({ p, text: formatPrefix(p) }))
      .sort((a, b) => a.text.localeCompare(b.text)).map(({ p }) => p);
  }

  /** Longest match for the IPv4 address stored big-endian at `bytes[offset..offset+4]`. */
  lookupV4(bytes: Uint8Array, offset: number): T | undefined {
    const addr = ((bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) | bytes[offset + 3]) >>> 0;
    for (const bits of this.v4.lengths) {
      const hit = this.v4.byLength.get(bits)!.get(v4Key(addr, bits));
      if (hit) return hit.value;
    }
    return undefined;
  }

  /** Longest match for the IPv6 address at `bytes[offset..offset+16]`. */
  lookupV6(bytes: Uint8Array, offset: number): T | undefined {
    for (const bits of this.v6.lengths) {
      const hit = this.v6.byLength.get(bits)!.get(v6Key(bytes, offset, bits));
      if (hit) return hit.value;
    }
    return undefined;
  }

  /** Longest match for an address given as its bytes (4 or 16). */
  lookup(addr: Uint8Array): T | undefined {
    return addr.length === 4 ? this.lookupV4(addr, 0) : this.lookupV6(addr, 0);
  }
}
