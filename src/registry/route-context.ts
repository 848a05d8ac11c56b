import type { IncomingMessage } from 'node:http';
import type { Logger } from 'pino';
import type { Prefix } from '../ip/prefix.js';
import type { RelayInfo } from '../relay/protocol.js';
import type { AdminContext } from './admin-routes.js';
import type { EventHub } from './events.js';
import type { Entry, Fleet } from './fleet-state.js';
import type { AgentChangeKind, RegistryStats } from './protocol.js';
import type { RegistryEvents } from './registry-log.js';
import type { Route } from './route-table.js';
import type { SignatureBudget } from './signature-budget.js';
import type { RegistryStore } from './store.js';

/** What the routes work on; server.ts builds it. */
export interface RouteContext {
  store: RegistryStore;
  fleet: Fleet;
  hub: EventHub;
  signatures: SignatureBudget;
  log: Logger;
  defaultNetwork: string;
  pool: Prefix;
  heartbeatIntervalMs: number;
  offlineAfterMs: number;
  /** The relay and STUN servers a joining agent is told about. */
  relayInfo(req: IncomingMessage): { relays: RelayInfo[]; stun: string[] };
  /** Logs a change and pushes it to the network's event streams. */
  emit(network: string, kind: AgentChangeKind, entry: Entry, id: string): void;
  admin: AdminContext;
  /** The registry's own audit log: joins and leaves are on disk before they are answered. */
  events: RegistryEvents;
  /** /v1/audit/* (audit-routes.ts). */
  audit: { routes: readonly Route[] };
  stats(): RegistryStats;
}
