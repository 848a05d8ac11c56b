import { MAX_FRAME_SIZE } from './protocol.js';

/**
 * The relay's TCP fallback: an HTTP/1.1 upgrade on one path, then the same frames as over UDP,
 * each preceded by its length (2 bytes, big-endian), both ways. Riding on the registry's HTTP(S)
 * port lets agents on networks that block UDP reach the relay wherever they reach the registry.
 *
 *   GET /v1/relay HTTP/1.1          HTTP/1.1 101 Switching Protocols
 *   Connection: Upgrade             Connection: Upgrade
 *   Upgrade: agentvpn-relay         Upgrade: agentvpn-relay
 */

export const UPGRADE_PATH = '/v1/relay';
export const UPGRADE_PROTOCOL = 'agentvpn-relay';
export const LENGTH_SIZE = 2;
/** Queued-but-unsent bytes on one TCP connection past which frames to it are dropped (no unbounded buffering). */
export const MAX_TCP_BACKLOG_BYTES = 1 << 20;

export const UPGRADE_RESPONSE =
  `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${UPGRADE_PROTOCOL}\r\n\r\n`;

/** One frame with its length prefix, ready for socket.write. */
export function encodeTcpFrame(frame: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(LENGTH_SIZE + frame.length);
  out.writeUInt16BE(frame.length, 0);
  out.set(frame, LENGTH_SIZE);
  return out;
}

/**
 * Splits a TCP byte stream into frames. Frames handed to onFrame are views of the received
 * chunks (or of a joined copy when a frame spans chunks), which are never reused, so they may be
 * kept or mutated. A length of zero or above MAX_FRAME_SIZE is a protocol error: the reader
 * stops and onError fires once (the caller closes the connection).
 */
export class FrameReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private failed = false;

  constructor(
    private readonly onFrame: (frame: Buffer) => void,
    private readonly onError: (reason: 'oversized' | 'garbage') => void,
  ) {}

  push(chunk: Buffer): void {
    if (this.failed || chunk.length === 0) return;
    let buf = chunk;
    if (this.pendingBytes > 0) {
      this.pending.push(chunk);
      buf = Buffer.concat(this.pending, this.pendingBytes + chunk.length);
      this.pending = [];
      this.pendingBytes = 0;
    }
    let off = 0;
    while (buf.length - off >= LENGTH_SIZE) {
      const len = buf.readUInt16BE(off);
      if (len === 0 || len > MAX_FRAME_SIZE) {
        this.failed = true;
        this.onError(len === 0 ? 'garbage' : 'oversized');
        return;
      }
      if (buf.length - off - LENGTH_SIZE < len) break;
      const start = off + LENGTH_SIZE;
      off = start + len;
      this.onFrame(buf.subarray(start, off));
      if (this.failed) return;
    }
    if (off < buf.length) {
      this.pending.push(buf.subarray(off));
      this.pendingBytes = buf.length - off;
    }
  }

  /** Stops delivering frames (after the connection is closed or handed over). */
  close(): void {
    this.failed = true;
    this.pending = [];
    this.pendingBytes = 0;
  }
}
