import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { parseAddress } from '../ip/prefix.js';

/**
 * Keeps an HTTP server's TCP connections under its caps (the registry's; a standalone relay's
 * TCP fallback), so no client can take the descriptors that other agents, the database, the
 * relay and health checks need:
 *
 *   - one client address (an IPv4 address, an IPv6 /64: whoever has one /64 has them all)
 *     holds at most `perAddress` connections: past that, that address's connection idle the
 *     longest (no request in progress: never sent one, or between keep-alive requests) is
 *     closed to make room, so agents behind one NAT keep getting in while they hold an event
 *     stream and a kept connection each; with none of its own idle, the new one is closed;
 *   - past `total`, the connection idle the longest of all is closed the same way, so idle
 *     floods from many addresses cannot keep a health check or an agent out.
 *
 * Connections are counted as TCP connections (for HTTPS, before the TLS handshake).
 * A connection is busy while a request is in progress on it, and for good once held: a relay
 * accepted a hello on it (its TCP fallback, hold()). An upgrade request alone holds nothing: it
 * is answered like any request, or refused by the relay, so no stranger can pin a socket.
 */
/** Connections open now, and those the caps closed (at once, or evicted idle to make room). */
export interface ConnectionStats {
  open: number;
  refusedPerAddress: number;
  refusedTotal: number;
  evicted: number;
  evictedPerAddress: number;
}

export class ConnectionGuard {
  private readonly byAddress = new Map<string, AddressState>();
  /** Every connection by "address|port" (the same for a TLS socket and the TCP socket under it). */
  private readonly connections = new Map<string, Tracked>();
  /** The idle ones, longest idle first (a Map keeps insertion order). */
  private readonly idle = new Map<string, Tracked>();
  private readonly counts = { refusedPerAddress: 0, refusedTotal: 0, evicted: 0, evictedPerAddress: 0 };

  constructor(private readonly limits: { perAddress: number; total: number }) {}

  attach(server: Server): void {
    server.on('connection', (socket: Socket) => this.admit(socket));
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const t = this.connections.get(keyOf(req.socket));
      if (!t) return;
      this.setBusy(t, +1);
      res.once('close', () => this.setBusy(t, -1));
    });
  }

  /** A relay accepted a hello on this connection: busy for good, never evicted; still counted. */
  hold(socket: Duplex): void {
    const t = this.connections.get(keyOf(socket as Socket));
    if (t) this.setBusy(t, +1);
  }

  stats(): ConnectionStats {
    return { open: this.connections.size, ...this.counts };
  }

  private admit(socket: Socket): void {
    const address = addressKey(socket.remoteAddress);
    if (address === null) return void socket.destroy();
    const own = this.byAddress.get(address);
    if (own && own.count >= this.limits.perAddress) {
      if (!evictIdlest(own.idle)) {
        this.counts.refusedPerAddress++;
        return void socket.destroy();
      }
      this.counts.evictedPerAddress++;
    }
    if (this.connections.size >= this.limits.total) {
      if (!evictIdlest(this.idle)) {
        this.counts.refusedTotal++;
        return void socket.destroy();
      }
      this.counts.evicted++;
    }
    const key = keyOf(socket);
    this.connections.get(key)?.release(); // a stale entry for a reused port
    let at = this.byAddress.get(address);
    if (!at) this.byAddress.set(address, (at = { address, count: 0, idle: new Map() }));
    const t: Tracked = { key, at, socket, busy: 0, release: () => this.release(t) };
    this.connections.set(key, t);
    at.count++;
    this.setIdle(t, true);
    socket.once('close', t.release);
  }

  private setBusy(t: Tracked, delta: number): void {
    if (this.connections.get(t.key) !== t) return;
    t.busy += delta;
    this.setIdle(t, false);
    if (t.busy === 0) this.setIdle(t, true); // to the back: idle since now
  }

  private setIdle(t: Tracked, idle: boolean): void {
    for (const map of [this.idle, t.at.idle]) {
      if (idle) map.set(t.key, t);
      else map.delete(t.key);
    }
  }

  /** Forgets a connection (at once when evicted, so the new one can take its place); safe to call twice. */
  private release(t: Tracked): void {
    if (this.connections.get(t.key) !== t) return;
    this.connections.delete(t.key);
    this.setIdle(t, false);
    if (--t.at.count === 0) this.byAddress.delete(t.at.address);
  }
}

/** Closes the connection idle the longest in `idle` (insertion order: longest idle first); false when none is. */
function evictIdlest(idle: Map<string, Tracked>): boolean {
  const first = idle.values().next();
  if (first.done) return false;
  first.value.release();
  first.value.socket.destroy();
  return true;
}

/** One client address: its connections, and those of them idle (longest idle first). */
interface AddressState {
  address: string;
  count: number;
  idle: Map<string, Tracked>;
}

interface Tracked {
  key: string;
  at: AddressState;
  socket: Socket;
  /** Requests in progress (an upgraded connection stays busy). */
  busy: number;
  release(): void;
}

function keyOf(socket: { remoteAddress?: string; remotePort?: number }): string {
  return `${socket.remoteAddress}|${socket.remotePort}`;
}

/** The client as the caps count it: the IPv4 address, or the IPv6 /64 (hex of its first 8 bytes). */
export function addressKey(remote: string | undefined): string | null {
  if (!remote) return null;
  const bytes = parseAddress(remote.replace(/^::ffff:(?=\d+\.)/, ''));
  if (!bytes) return null;
  return bytes.length === 4 ? bytes.join('.') : Buffer.from(bytes.subarray(0, 8)).toString('hex');
}
