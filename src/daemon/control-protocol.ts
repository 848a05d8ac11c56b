/**
 * The control socket's wire format: one JSON object per line in each direction.
 *
 * | direction | line                                                        | meaning                                   |
 * | --------- | ----------------------------------------------------------- | ----------------------------------------- |
 * | → daemon  | {"id":1,"method":"status","params":{}}                      | a request                                 |
 * | ← client  | {"id":1,"ok":true,"result":…}                               | its answer                                |
 * | ← client  | {"id":1,"ok":false,"code":"…","message":"…","hint":"…"}     | its refusal (an AgentVpnError)            |
 *
 * A streaming method ("events") answers once with ok, then keeps the connection for its stream:
 *
 * | ← client  | {"id":1,"ok":true,"result":{"stream":"events","types":[…]}} | subscribed                                |
 * | ← client  | {"id":1,"event":{"type":"peer.offline","at":…,…}}           | one event (DaemonEvent)                   |
 * | ← client  | {"id":1,"event":{"type":"lagged","at":…,"dropped":N}}       | N events left out: the client read slowly |
 * | ← client  | {"id":1,"end":{"code":"…","message":"…","hint":"…"}}        | the daemon ends the stream, then closes   |
 *
 * The client ends a stream by closing the connection. What it sends on a stream's connection
 * after the ok is discarded: one connection, one stream.
 */
export interface ControlRequest {
  id: number | string;
  method: string;
  params?: unknown;
}

export type ControlResponse =
  | { id: number | string | null; ok: true; result: unknown }
  | { id: number | string | null; ok: false; code: string; message: string; hint: string };

/** A line of an open stream (after its ok answer). */
export type StreamLine =
  | { id: number | string; event: DaemonEvent }
  | { id: number | string; end: { code: string; message: string; hint: string } };

/** Where a peer's packets go now, as the path layer chose it. */
export type PathKind = 'direct' | 'relay';

/** An agent of the fleet as events name it. */
export interface EventAgent {
  /** Agent ID. */
  id: string;
  name: string;
  ipv4: string;
  ipv6: string;
}

/** What the daemon reports on its event stream; `at` is the daemon's clock (ms since the epoch). */
export type DaemonEvent =
  /** The registry reports an admitted agent online (heartbeats arrive) or offline (it left, or went quiet). */
  | (EventAgent & { type: 'peer.online' | 'peer.offline'; at: number; reason?: 'removed'; suppressed?: number })
  /** Our path to a peer changed: `endpoint` is its address (direct) or the relay's name, as `status` shows it. */
  | (EventAgent & { type: 'path.changed'; at: number; kind: PathKind; endpoint: string; rttMs: number | null; reason?: string; suppressed?: number })
  /** The trust store refused an agent's record (a changed key, an unapproved or blocked agent). */
  | { type: 'trust.alert'; at: number; id: string; name: string; state: string; alert: string; suppressed?: number }
  /** `dropped` events were left out because this subscriber read too slowly: re-read status() or peers(). */
  | { type: 'lagged'; at: number; dropped: number };

export type DaemonEventType = DaemonEvent['type'];

/** Event types a subscriber may ask for ('lagged' always comes). */
export const EVENT_TYPES: readonly Exclude<DaemonEventType, 'lagged'>[] = ['peer.online', 'peer.offline', 'path.changed', 'trust.alert'];

/** The params of the "events" method. */
export interface EventsParams {
  /** Only these types (default all). */
  types?: string[];
}
