import type { Socket } from 'node:net';
import type { DnsLimits } from './limits.js';

/**
 * DNS over TCP (RFC 1035 4.2.2, RFC 7766): each message in either direction is preceded by its
 * length, clients may pipeline.
 *
 * | offset | size   | field                               |
 * |--------|--------|-------------------------------------|
 * | 0      | 2      | length N of the message, big-endian |
 * | 2      | N      | the DNS message                     |
 */

/** What the responder counts when it holds back or ends a TCP client. */
export interface DnsTcpShedStats {
  /** Times a connection stopped being read because its answers were not being read. */
  tcpPaused: number;
  /** Messages held back (not dropped: TCP waits) because their source was over its query budget. */
  tcpDelayed: number;
  tcpIdleClosed: number;
  tcpLifetimeClosed: number;
}

export interface DnsTcpConnectionHooks {
  /** One message in, its answer out; null closes the connection (nothing sensible to say). */
  answer(message: Uint8Array): Buffer | null;
  /** Charges one query to the client's budget; false: wait, the budget refills. */
  admit(): boolean;
  limits: DnsLimits;
  shed: DnsTcpShedStats;
}

/** A client over its query budget is read again after this long (a token refills in ~2 ms). */
const BUDGET_RETRY_MS = 50;

/**
 * One client connection. It is read only as fast as it reads its answers: while the socket's
 * write buffer is full, or too many answers are not yet taken by the kernel, the socket is
 * paused, so the kernel's windows (not our memory) hold what the client keeps sending.
 * What is buffered here is at most one read chunk plus one incomplete message.
 */
export class DnsTcpConnection {
  private pending: Buffer = Buffer.alloc(0);
  /** Answers written to the socket whose bytes the kernel has not yet taken. */
  private inFlight = 0;
  /** write() said the buffer is over its high-water mark: wait for 'drain'. */
  private writeBlocked = false;
  private budgetTimer: NodeJS.Timeout | null = null;
  private readonly lifetimeTimer: NodeJS.Timeout;

  constructor(private readonly conn: Socket, private readonly hooks: DnsTcpConnectionHooks) {
    const { limits, shed } = hooks;
    conn.setTimeout(limits.tcpIdleMs, () => {
      shed.tcpIdleClosed++;
      conn.destroy();
    });
    this.lifetimeTimer = setTimeout(() => {
      shed.tcpLifetimeClosed++;
      conn.destroy();
    }, limits.tcpLifetimeMs);
    conn.on('data', (chunk: Buffer) => {
      this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
      this.pump();
    });
    conn.on('drain', () => {
      this.writeBlocked = false;
      this.pump();
    });
    conn.on('error', () => conn.destroy());
    conn.on('close', () => {
      clearTimeout(this.lifetimeTimer);
      if (this.budgetTimer) clearTimeout(this.budgetTimer);
    });
  }

  /** Answers complete messages while there is room, then reads on or pauses accordingly. */
  private pump(): void {
    const { conn, hooks } = this;
    while (this.canAnswer() && this.pending.length >= 2) {
      const length = this.pending.readUInt16BE(0);
      if (this.pending.length < 2 + length) break;
      if (!hooks.admit()) {
        hooks.shed.tcpDelayed++;
        this.budgetTimer = setTimeout(() => {
          this.budgetTimer = null;
          this.pump();
        }, BUDGET_RETRY_MS);
        break;
      }
      const reply = hooks.answer(this.pending.subarray(2, 2 + length));
      this.pending = this.pending.subarray(2 + length);
      if (!reply) {
        conn.destroy();
        return;
      }
      const framed = Buffer.allocUnsafe(2 + reply.length);
      framed.writeUInt16BE(reply.length, 0);
      reply.copy(framed, 2);
      this.inFlight++;
      const taken = () => {
        this.inFlight--;
        this.pump();
      };
      if (!conn.write(framed, taken)) this.writeBlocked = true;
    }
    if (conn.destroyed) return;
    if (this.canAnswer()) {
      conn.resume();
    } else if (!conn.isPaused()) {
      if (this.writeBlocked || this.inFlight >= hooks.limits.tcpQueriesInFlight) hooks.shed.tcpPaused++;
      conn.pause();
    }
  }

  private canAnswer(): boolean {
    return !this.conn.destroyed && !this.writeBlocked && this.budgetTimer === null && this.inFlight < this.hooks.limits.tcpQueriesInFlight;
  }
}
