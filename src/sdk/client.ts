import { callDaemon } from '../daemon/control-client.js';
import { controlSocketPath } from '../daemon/paths.js';
import { DEFAULT_INTERFACE } from '../tun/interface-name.js';
import { sdkError } from './errors.js';
import { EventStream, type EventsOptions } from './events.js';
import type { Addresses, ConnectOptions, DeviceStatus, PeerInfo, PingResult, SelfInfo, WhoisInfo } from './types.js';

/**
 * A typed client of the local agentvpn daemon (its control socket). Each call is one request on
 * its own connection; events() keeps one connection for its stream.
 */
export class AgentVpn {
  readonly interface: string;
  readonly socketPath: string;
  private readonly timeoutMs: number;

  constructor(opts: ConnectOptions = {}) {
    this.interface = opts.interface ?? DEFAULT_INTERFACE;
    this.socketPath = opts.socketPath ?? controlSocketPath(this.interface);
    this.timeoutMs = opts.timeoutMs ?? 5000;
  }

  /** The device: interface, addresses, listen port, and each peer's counters and path. */
  status(): Promise<DeviceStatus> {
    return this.call('status');
  }

  /** Who we are in the network: ID, name, overlay addresses, capabilities, tags. */
  whoami(): Promise<SelfInfo> {
    return this.call('id');
  }

  /** Every agent this daemon admitted, with its online state. */
  peers(): Promise<PeerInfo[]> {
    return this.call('peers', {});
  }

  /** Agents with a capability (structured match: `llm.inference`, `llm.inference@1;model=llama3`). */
  discover({ cap }: { cap: string }): Promise<PeerInfo[]> {
    return this.call('peers', { cap });
  }

  /** An agent's overlay addresses by name (`worker` or `worker.<network>`). */
  resolve(name: string): Promise<Addresses> {
    return this.call('resolve', { name });
  }

  /** Disco pings to an agent (by name, IPv4 or ID) over its current path. */
  ping(peer: string, { count = 1 }: { count?: number } = {}): Promise<PingResult> {
    // Each ping waits up to 2 s for its pong, a short pause between them: give the call that on top.
    return this.call('ping', { name: peer, count }, this.timeoutMs + count * 2500);
  }

  /** Who holds an overlay address ("100.64.0.7", "100.64.0.7:8080", "[fd00::7]:8080"): for servers that authorize by sender. */
  whois(address: string): Promise<WhoisInfo> {
    return this.call('whois', { address });
  }

  /** Peer online/offline, path changes and trust alerts as they happen: `for await (const ev of vpn.events())`. */
  events(opts: EventsOptions = {}): EventStream {
    return new EventStream({ iface: this.interface, socketPath: this.socketPath, timeoutMs: this.timeoutMs }, opts);
  }

  private async call<T>(method: string, params?: unknown, timeoutMs = this.timeoutMs): Promise<T> {
    try {
      return (await callDaemon(this.interface, method, params, { timeoutMs, socketPath: this.socketPath })) as T;
    } catch (e) {
      throw sdkError(e, this.interface, this.socketPath, method);
    }
  }
}

/** Connects to the local daemon and checks that it answers (a clear AgentVpnError when it does not). */
export async function connect(opts: ConnectOptions = {}): Promise<AgentVpn> {
  const vpn = new AgentVpn(opts);
  await vpn.status();
  return vpn;
}
