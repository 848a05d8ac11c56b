/**
 * TAI64N timestamps for handshake initiations: 8 bytes big-endian seconds (TAI64 label, i.e.
 * 2^62 + 10 + unix seconds) and 4 bytes big-endian nanoseconds. Nanoseconds are rounded down to
 * a multiple of 2^24 (~16 ms) so the timestamp does not leak fine-grained clock readings.
 */
const TAI64_BASE = 0x4000_0000_0000_000an;
const WHITENER_MASK = 0x1000000 - 1;

export function tai64n(nowMs: number = Date.now()): Buffer {
  const out = Buffer.alloc(12);
  const seconds = Math.floor(nowMs / 1000);
  const nanos = (nowMs - seconds * 1000) * 1_000_000;
  out.writeBigUInt64BE(TAI64_BASE + BigInt(seconds), 0);
  out.writeUInt32BE((nanos & ~WHITENER_MASK) >>> 0, 8);
  return out;
}

/** Timestamps compare as 12-byte big-endian numbers. */
export function isAfter(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) > 0;
}
