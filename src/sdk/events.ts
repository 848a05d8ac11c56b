import { openDaemonStream, type ControlStreamConnection } from '../daemon/control-client.js';
import type { DaemonEvent, DaemonEventType } from '../daemon/control-protocol.js';
import { sdkError } from './errors.js';

export interface EventsOptions {
  /** Only these event types (default all); `lagged` always comes. */
  types?: Exclude<DaemonEventType, 'lagged'>[];
}

/**
 * The daemon's events as an async iterator: `for await (const ev of vpn.events())`. Leaving the
 * loop (break, return, throw) or close() ends the subscription. The daemon ends it with an
 * AgentVpnError (DAEMON_STOPPING, DAEMON_CLOSED, EVENTS_TOO_SLOW) thrown from the loop.
 */
export class EventStream implements AsyncIterable<DaemonEvent> {
  /** Resolves once the daemon accepted the subscription (events from then on are delivered). */
  readonly opened: Promise<void>;
  private conn: ControlStreamConnection | null = null;
  private closed = false;

  constructor(target: { iface: string; socketPath: string; timeoutMs: number }, opts: EventsOptions = {}) {
    const connecting = openDaemonStream(target.iface, 'events', opts.types ? { types: opts.types } : {}, { socketPath: target.socketPath, timeoutMs: target.timeoutMs })
      .catch((e: unknown) => { throw sdkError(e, target.iface, target.socketPath, 'events'); });
    this.opened = connecting.then(({ stream }) => {
      this.conn = stream;
      if (this.closed) stream.close();
    });
    this.opened.catch(() => {}); // a failure surfaces in the loop; an unawaited `opened` must not crash the process
  }

  /** The next event; null once closed. */
  async next(): Promise<DaemonEvent | null> {
    await this.opened;
    return this.closed ? null : this.conn!.next();
  }

  close(): void {
    this.closed = true;
    this.conn?.close();
  }

  [Symbol.asyncIterator](): AsyncIterator<DaemonEvent> {
    return {
      next: async () => {
        try {
          const ev = await this.next();
          return ev ? { done: false, value: ev } : { done: true, value: undefined };
        } catch (e) {
          this.close();
          throw e;
        }
      },
      return: async () => {
        this.close();
        return { done: true, value: undefined };
      },
    };
  }
}
