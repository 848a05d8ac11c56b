import { AgentVpnError } from '../errors.js';
import { EventLimit } from '../util/event-limit.js';
import { EVENT_TYPES, type DaemonEvent, type DaemonEventType } from './control-protocol.js';
import { CONTROL_STREAM, type ControlStream, type StreamSink } from './control-stream.js';

/** Subscribers at once: an SDK that leaks subscriptions in a loop meets a clear error, not an fd and memory drain. */
export const MAX_SUBSCRIBERS = 32;

/**
 * Events a peer or the registry can repeat at will (a path made to flap, presence toggled): each
 * agent gets 20 per 10 s (500 in all); the rest are counted in the next one's `suppressed`, so a
 * flood costs subscribers a bounded number of lines, and costs us no JSON per left-out event.
 */
const EVENT_LIMITS = { perKey: 20, total: 500, windowMs: 10_000, maxKeys: 16_384 };

type WithoutTime<E> = E extends unknown ? Omit<E, 'at' | 'suppressed'> : never;

/** An event as a source publishes it (any type but `lagged`, which writers make): the hub adds the time. */
export type EventInput = WithoutTime<Exclude<DaemonEvent, { type: 'lagged' }>>;

class Subscription implements ControlStream {
  readonly [CONTROL_STREAM] = true as const;
  sink: StreamSink | null = null;

  constructor(readonly types: ReadonlySet<string>, private readonly onClose: (s: Subscription) => void) {}

  get accepted() {
    return { stream: 'events', types: [...this.types] };
  }

  attach(sink: StreamSink): void {
    this.sink = sink;
  }

  close(): void {
    this.sink = null;
    this.onClose(this);
  }
}

/**
 * The daemon's event stream: sources (presence, paths, trust) publish here, subscribers on the
 * control socket ("events") receive. Each event is serialized once for every subscriber; what a
 * subscriber cannot take in time its writer drops and reports as `lagged` (control-stream.ts).
 */
export class EventHub {
  private readonly subscribers = new Set<Subscription>();
  private readonly limit = new EventLimit(EVENT_LIMITS);
  readonly stats = { published: 0, suppressed: 0, refusedSubscribers: 0 };

  constructor(private readonly now: () => number = Date.now) {}

  /** The "events" control method: a subscription the control server attaches to the connection. */
  subscribe(params: unknown): ControlStream {
    const types = parseTypes((params as { types?: unknown } | undefined)?.types);
    if (this.subscribers.size >= MAX_SUBSCRIBERS) {
      this.stats.refusedSubscribers++;
      throw new AgentVpnError('TOO_MANY_SUBSCRIBERS', `the daemon already serves ${MAX_SUBSCRIBERS} event subscribers`,
        'close event streams you no longer read (break out of the loop, or call close()); one stream can carry every event type');
    }
    const sub = new Subscription(types, (s) => this.subscribers.delete(s));
    this.subscribers.add(sub);
    return sub;
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  /** Delivers an event to every subscriber that wants its type, within the per-agent budget. */
  publish(event: EventInput): void {
    if (this.subscribers.size === 0) return; // nobody listens: no budget spent, nothing built
    const taken = this.limit.take(`${budgetKeyOf(event.type)} ${event.id}`, this.now());
    if (!taken) {
      this.stats.suppressed++;
      return;
    }
    this.stats.published++;
    const json = JSON.stringify({ ...event, at: this.now(), ...(taken.skipped ? { suppressed: taken.skipped } : {}) });
    for (const s of this.subscribers) if (s.types.has(event.type)) s.sink?.send(json);
  }
}

/** Online and offline share one budget: a flapping presence is one thing. */
function budgetKeyOf(type: DaemonEventType): string {
  return type === 'peer.offline' ? 'peer.online' : type;
}

function parseTypes(raw: unknown): ReadonlySet<string> {
  if (raw === undefined || raw === null) return new Set(EVENT_TYPES);
  const known = new Set<string>(EVENT_TYPES);
  if (!Array.isArray(raw) || raw.length === 0 || raw.length > EVENT_TYPES.length * 2 || !raw.every((t) => typeof t === 'string' && known.has(t))) {
    throw new AgentVpnError('BAD_EVENT_TYPE', `events: "types" must be a non-empty list of ${EVENT_TYPES.join(', ')}`,
      'leave "types" out to receive every event type');
  }
  return new Set(raw as string[]);
}
