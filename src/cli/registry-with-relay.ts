import { BUILTIN_RELAY_NAME, DEFAULT_RELAY_REGION, advertisedRelays } from '../registry/relay-list.js';
import { DEFAULT_LISTEN, parseListen, startRegistry, type BuiltInRelay, type RegistryOptions, type RunningRegistry } from '../registry/server.js';
import { formatHostPort } from '../relay/protocol.js';
import { startRelay, type RelayStats, type RunningRelay } from '../relay/server.js';
import { UPGRADE_PATH } from '../relay/tcp.js';

/**
 * `agentvpn registry` without --no-relay: the registry, and the built-in relay and STUN beside it,
 * composed here so that neither knows the other. The relay takes UDP on the registry's port number
 * (STUN also on the next port) and its TCP fallback on the registry's HTTP server; only the
 * registry's members may use it (its allow hook is the registry's networksOf), and a member removed
 * or blocked is dropped at once (membershipChanged). The registry advertises it first in every join
 * answer, at the host the agent reached the registry at, under its name (--relay-name), which is
 * also the name the relay takes hellos for (relay/relay-name.ts).
 */

export interface RegistryWithRelayOptions extends Omit<RegistryOptions, 'builtInRelay'> {
  /** The built-in relay's name and region in the advertised list (default "registry", "default"). */
  relayName?: string;
  relayRegion?: string;
}

export interface RunningRegistryWithRelay extends RunningRegistry<RelayStats> {
  relay: RunningRelay;
}

/** Starts the registry, then the relay on its port number; resolves once both are listening. */
export async function startRegistryWithRelay(opts: RegistryWithRelayOptions): Promise<RunningRegistryWithRelay> {
  const { relayName, relayRegion, ...registryOpts } = opts;
  const { host, port } = parseListen(opts.listen ?? DEFAULT_LISTEN);
  const entry = { name: relayName ?? BUILTIN_RELAY_NAME, region: relayRegion ?? DEFAULT_RELAY_REGION };
  // Its name beside the standalone relays' (unique, at most 16 in all), checked before anything is opened.
  advertisedRelays({ ...entry, udp: '' }, opts.relayPeers ?? []);

  // Set once both run: until then the registry advertises no relay of its own, as it would alone.
  let running: { relay: RunningRelay; scheme: string; httpPort: number } | null = null;
  const beside: BuiltInRelay<RelayStats> = {
    advertised: (agentHost) => {
      if (!running) return null;
      const udp = formatHostPort(agentHost, running.relay.udpPort);
      return {
        relay: { udp, tcp: `${running.scheme}//${formatHostPort(agentHost, running.httpPort)}${UPGRADE_PATH}`, ...entry },
        stun: [udp, formatHostPort(agentHost, running.relay.stunSecondPort)],
      };
    },
    membershipChanged: () => running?.relay.recheck(),
    stats: () => running?.relay.stats() ?? null,
  };

  const registry = await startRegistry({ ...registryOpts, builtInRelay: beside });
  const relayOpts = {
    stunSecondPort: true, tcpServer: registry.httpServer, onTcpSession: registry.holdConnection, allow: registry.networksOf, log: opts.log?.child({ component: 'relay' }),
    names: [entry.name], // the name it is advertised under: agents' hellos are signed for it
  };
  let relay: RunningRelay;
  try {
    relay = await startRelay({ ...relayOpts, udp: { host, port: registry.port } }).catch((e: unknown) => {
      // A port the operator chose is kept or refused; a free one picked for HTTP may be taken for UDP: any free one then.
      if (port !== 0) throw e;
      return startRelay({ ...relayOpts, udp: { host, port: 0 } });
    });
  } catch (e) {
    await registry.stop();
    throw e;
  }
  // The TCP fallback is on the registry's own port, by its scheme (http, or https with TLS).
  running = { relay, scheme: new URL(registry.url).protocol, httpPort: registry.port };

  let stopping: Promise<void> | undefined;
  return {
    ...registry,
    relay,
    // The relay first: its sessions ride on the registry's HTTP server and ask the registry who is a member.
    stop: () => (stopping ??= (async () => {
      try {
        await relay.stop();
      } finally {
        await registry.stop();
      }
    })()),
  };
}
