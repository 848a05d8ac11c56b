import { createHash } from 'node:crypto';
import type { AgentView } from './protocol.js';

/**
 * A digest of a network's agent views, kept by an event-stream reader and by the registry, so a
 * reader whose stream resume point no other process can take (the registry restarted, or it
 * failed over to another instance) gets only what differs instead of the whole fleet
 * (events.ts, "Resuming by digest").
 *
 * Agents fall into DIGEST_BUCKETS buckets by a hash of their ID. An agent's entry hash covers
 * what an event changes in its view: the record (its seq and the signature that binds its
 * content), online, the operator's tags and the key chain's length; lastSeen is left out, since
 * only events move it in a reader's copy. A bucket's digest is a hash of its entries' hashes in
 * ID order. The reader sends all bucket digests (VIEW_DIGEST_HEADER); the registry answers each
 * bucket that differs with the IDs it holds there and their views.
 *
 * Against a member who grinds records or IDs: a digest is 96 bits of SHA-256, so making a stale
 * bucket look current takes a second preimage; IDs ground into one bucket only make that bucket
 * costly to resend, never more than the snapshot the registry falls back to past half of them.
 */

export const DIGEST_BUCKETS = 256;
const BUCKET_DIGEST_BYTES = 12;
const ENTRY_HASH_BYTES = 16;
/** The request header with a reader's digest: DIGEST_BUCKETS x BUCKET_DIGEST_BYTES bytes, base64url. */
export const VIEW_DIGEST_HEADER = 'x-agentvpn-view-digest';
const DIGEST_CHARS = Math.ceil((DIGEST_BUCKETS * BUCKET_DIGEST_BYTES) / 3) * 4;

export function bucketOf(id: string): number {
  return createHash('sha256').update(id).digest()[0] % DIGEST_BUCKETS;
}

function entryHash(view: AgentView): Buffer {
  const { record, signature, online, tags, chain } = view;
  const facts = JSON.stringify([record.id, record.seq, signature, online, tags ?? [], chain?.length ?? 0]);
  return createHash('sha256').update(facts).digest().subarray(0, ENTRY_HASH_BYTES);
}

/** A reader's digest from its header; null unless it has exactly the form a reader sends. */
export function decodeViewDigest(text: string | undefined): Buffer[] | null {
  if (text === undefined || text.length !== DIGEST_CHARS || !/^[A-Za-z0-9_-]+$/.test(text)) return null;
  const bytes = Buffer.from(text, 'base64url');
  if (bytes.length !== DIGEST_BUCKETS * BUCKET_DIGEST_BYTES) return null;
  return Array.from({ length: DIGEST_BUCKETS }, (_, b) => bytes.subarray(b * BUCKET_DIGEST_BYTES, (b + 1) * BUCKET_DIGEST_BYTES));
}

/** Entry hashes by bucket, with each bucket's digest computed when asked and kept until it changes. */
export class ViewDigest {
  private readonly buckets = Array.from({ length: DIGEST_BUCKETS }, () => new Map<string, Buffer>());
  private readonly digests: Array<Buffer | null> = new Array(DIGEST_BUCKETS).fill(null);

  set(view: AgentView): void {
    const id = view.record.id;
    const b = bucketOf(id);
    const hash = entryHash(view);
    const held = this.buckets[b].get(id);
    if (held && held.equals(hash)) return;
    this.buckets[b].set(id, hash);
    this.digests[b] = null;
  }

  delete(id: string): void {
    const b = bucketOf(id);
    if (this.buckets[b].delete(id)) this.digests[b] = null;
  }

  clear(): void {
    for (const [b, bucket] of this.buckets.entries()) {
      bucket.clear();
      this.digests[b] = null;
    }
  }

  /** The IDs in bucket `b`, in order. */
  idsIn(b: number): string[] {
    return [...this.buckets[b].keys()].sort();
  }

  digestOf(b: number): Buffer {
    let d = this.digests[b];
    if (!d) {
      const h = createHash('sha256');
      for (const id of this.idsIn(b)) h.update(this.buckets[b].get(id)!);
      d = this.digests[b] = h.digest().subarray(0, BUCKET_DIGEST_BYTES);
    }
    return d;
  }

  /** The buckets whose digest differs from `other`'s. */
  differing(other: Buffer[]): number[] {
    const out: number[] = [];
    for (let b = 0; b < DIGEST_BUCKETS; b++) if (!this.digestOf(b).equals(other[b])) out.push(b);
    return out;
  }

  /** The header value a reader sends. */
  encode(): string {
    return Buffer.concat(Array.from({ length: DIGEST_BUCKETS }, (_, b) => this.digestOf(b))).toString('base64url');
  }
}

/** Whether a view from the registry has what an entry hash covers (anything else is left out). */
function hashable(v: unknown): v is AgentView {
  const view = v as AgentView | null;
  return !!view && typeof view === 'object' && !!view.record && typeof view.record.id === 'string' && Number.isSafeInteger(view.record.seq)
    && typeof view.signature === 'string' && typeof view.online === 'boolean';
}

/**
 * An event-stream reader's side: the digest of the views its stream gave it, kept from the
 * frames, and sent when it reconnects once it has had a snapshot.
 */
export class ReaderDigest {
  private readonly digest = new ViewDigest();
  private synced = false;

  snapshot(agents: unknown[]): void {
    this.digest.clear();
    for (const a of agents) if (hashable(a)) this.digest.set(a);
    this.synced = true;
  }

  change(agent: unknown): void {
    if (hashable(agent)) this.digest.set(agent);
  }

  removed(id: string): void {
    this.digest.delete(id);
  }

  /** A `bucket` frame: the IDs of that bucket the registry no longer holds (forgotten here), or null when the frame is malformed. */
  bucket(frame: { bucket?: unknown; ids?: unknown }): string[] | null {
    const { bucket, ids } = frame;
    if (!Number.isInteger(bucket) || (bucket as number) < 0 || (bucket as number) >= DIGEST_BUCKETS || !Array.isArray(ids) || !ids.every((i) => typeof i === 'string')) return null;
    const kept = new Set(ids as string[]);
    const gone = this.digest.idsIn(bucket as number).filter((id) => !kept.has(id));
    for (const id of gone) this.digest.delete(id);
    return gone;
  }

  /** The VIEW_DIGEST_HEADER value, or null before the first snapshot. */
  header(): string | null {
    return this.synced ? this.digest.encode() : null;
  }
}
