import { callDaemon } from './daemon/control-client.js';
import { DEFAULT_INTERFACE } from './tun/interface-name.js';
import type { PeerInfo, WhoisInfo } from './daemon/fleet.js';

export type { PeerInfo, WhoisInfo } from './daemon/fleet.js';
export type { DeviceStatus, PeerStatus } from './daemon/status-types.js';
/** The SDK (src/sdk/): connect() once, then status, peers, discover, resolve, ping, whois, events. */
export { AgentVpn, connect, EventStream } from './sdk/index.js';

/** Options of the one-shot calls below (connect() is the SDK's way: one client, every call). */
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

/**
 * Which agent holds an overlay address ("100.64.0.7", "100.64.0.7:8080", "[fd00::7]:8080"): its
 * name, ID, tags, capabilities and the app capabilities its grants give it toward us. A server
 * on the overlay can authorize a request by who sent it, with no passwords: the address was
 * authenticated by WireGuard.
 */
export async function whois(address: string, opts: QueryOptions = {}): Promise<WhoisInfo> {
  return (await callDaemon(opts.interface ?? DEFAULT_INTERFACE, 'whois', { address }, { timeoutMs: opts.timeoutMs })) as WhoisInfo;
}
