import { callDaemon } from './daemon/control-client.js';
import { DEFAULT_INTERFACE } from './daemon/paths.js';
import type { PeerInfo } from './daemon/fleet.js';

export type { PeerInfo } from './daemon/fleet.js';
export type { DeviceStatus, PeerStatus } from './daemon/status-types.js';

export interface QueryOptions {
  /** Which daemon to ask (default agentvpn0). */
  interface?: string;
  timeoutMs?: number;
}

/**
 * Agents of the fleet, optionally only those with a capability (exact structured match, e.g.
 * `llm.inference@1;model=llama3`), as the local daemon knows them. Needs a daemon in registry mode.
 */
export async function discover(opts: QueryOptions & { cap?: string } = {}): Promise<PeerInfo[]> {
  return (await callDaemon(opts.interface ?? DEFAULT_INTERFACE, 'peers', { cap: opts.cap }, { timeoutMs: opts.timeoutMs })) as PeerInfo[];
}

/** The overlay addresses of an agent by name. */
export async function resolve(name: string, opts: QueryOptions = {}): Promise<{ name: string; ipv4: string; ipv6: string }> {
  return (await callDaemon(opts.interface ?? DEFAULT_INTERFACE, 'resolve', { name }, { timeoutMs: opts.timeoutMs })) as { name: string; ipv4: string; ipv6: string };
}
