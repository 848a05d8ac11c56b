import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { createLogger, type LogLevel } from '../../util/logger.js';
import type { Argv, CommandModule } from 'yargs';
import { AgentVpnError } from '../../errors.js';
import { readAdminToken } from '../admin-token.js';
import { DEFAULT_LIMITS, MAX_TCP_CONNECTIONS_PER_SOURCE } from '../../relay/limits.js';
import { ConnectionGuard } from '../../net/connection-guard.js';
import { guardedServer } from '../../net/guarded-server.js';
import { defaultLimits } from '../../registry/limits.js';
import { parseAllowKeys } from '../../relay/allow-list.js';
import { validateRelayNames } from '../../relay/relay-name.js';
import { MemberFeed } from '../../relay/member-feed.js';
import { AdminClient } from '../../registry/admin-client.js';
import { publicKeyOfAgentId } from '../../identity/agent-id.js';
import { NETWORK_PATTERN } from '../../net/names.js';
import { formatHostPort, parseHostPort } from '../../relay/protocol.js';
import { startRelay, type RunningRelay } from '../../relay/server.js';
import { UPGRADE_PATH } from '../../relay/tcp.js';
import { parseMetricsListen } from '../../metrics/listen.js';
import { startRelayMetrics } from '../../metrics/relay.js';
import { printResult, runCommand, type GlobalArgs } from '../output.js';

interface RelayArgs extends GlobalArgs {
  listen?: string;
  name?: string[];
  'allow-key'?: string[];
  registry?: string;
  'admin-token-file'?: string;
  'registry-ca'?: string;
  network?: string[];
  'tls-cert'?: string;
  'tls-key'?: string;
  'stun-second-port': boolean;
  pps: number;
  bps: number;
  metrics?: string;
  'log-level': string;
}

/** How long the relay waits for the registry's first member lists before it listens anyway. */
const FIRST_MEMBERS_WAIT_MS = 3_000;

/** The relay's HTTP answers are one-shot (a health check, an upgrade): a kept connection need not wait long. */
const RELAY_KEEP_ALIVE_TIMEOUT_MS = 5_000;

function answerPlainRequest(req: IncomingMessage, res: ServerResponse): void {
  const ok = req.url === '/healthz';
  const body = JSON.stringify(ok ? { ok: true } : { ok: false, code: 'NOT_FOUND', message: 'this is an agentvpn relay', hint: `agents connect over UDP, or upgrade ${UPGRADE_PATH}` });
  res.writeHead(ok ? 200 : 404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function tlsOptions(cert?: string, key?: string): { cert: Buffer; key: Buffer } | null {
  if (!cert && !key) return null;
  if (!cert || !key) throw new AgentVpnError('USAGE', 'TLS needs both a certificate and a key', 'pass both --tls-cert and --tls-key');
  try {
    return { cert: readFileSync(cert), key: readFileSync(key) };
  } catch (e) {
    throw new AgentVpnError('TLS_FILES', `cannot read TLS certificate or key: ${(e as Error).message}`, 'check the --tls-cert and --tls-key paths and their permissions', { cause: e });
  }
}

/**
 * With --registry: the members of the given networks, read from the registry's admin API (the
 * command composes registry and relay; the relay only sees a list function per network).
 */
function memberFeed(args: RelayArgs, log: ReturnType<typeof createLogger>, onChange: () => void): MemberFeed | null {
  if (!args.registry) return null;
  if (args['allow-key']?.length) throw new AgentVpnError('USAGE', '--allow-key and --registry both name who may use the relay', 'give one: --registry URL follows its members, --allow-key pins keys');
  const token = readAdminToken(args['admin-token-file']);
  const networks = args.network?.length ? args.network : ['default'];
  for (const n of networks) if (!NETWORK_PATTERN.test(n)) throw new AgentVpnError('BAD_NETWORK', `invalid network "${n.slice(0, 80)}"`, 'network names are lowercase letters, digits and -, up to 63');
  const sources = networks.map((network) => {
    const admin = new AdminClient(args.registry!, token, network, args['registry-ca']);
    return {
      network,
      list: async () => (await admin.list()).agents.map((a) => (a.key ? Buffer.from(a.key, 'base64') : publicKeyOfAgentId(a.id))).filter((k): k is Uint8Array => !!k && k.length === 32),
    };
  });
  return new MemberFeed(sources, log, onChange);
}

async function serve(args: RelayArgs): Promise<void> {
  if (!args.listen) throw new AgentVpnError('USAGE', 'the relay needs --listen HOST:PORT', 'e.g. agentvpn relay --listen 0.0.0.0:7443');
  const { host, port } = parseHostPort(args.listen, '--listen address');
  const names = validateRelayNames(args.name ?? []);
  if (!(args.pps > 0 && args.bps > 0)) throw new AgentVpnError('USAGE', '--pps and --bps must be positive', 'e.g. --pps 20000 --bps 25000000');
  const allowed = args['allow-key']?.length ? parseAllowKeys(args['allow-key']) : null;
  const tls = tlsOptions(args['tls-cert'], args['tls-key']);
  if (args.metrics) parseMetricsListen(args.metrics); // a bad address is refused before anything starts
  const log = createLogger(args['log-level'] as LogLevel, { component: 'relay' });
  let relayRef: RunningRelay | null = null;
  const members = memberFeed(args, log, () => relayRef?.recheck());
  // The first lists before the first hello, waited for a little only: a registry that is down
  // does not keep the relay from starting (nobody is allowed until it answers; it is re-read).
  if (members) await Promise.race([members.refresh(), new Promise((r) => setTimeout(r, FIRST_MEMBERS_WAIT_MS).unref())]);
  members?.start();

  // The TCP fallback's server gets the registry's caps and timeouts: an idle flood must not take
  // the descriptors relay sessions need (Node's defaults hold a silent connection for up to 90 s).
  const guard = new ConnectionGuard({ perAddress: MAX_TCP_CONNECTIONS_PER_SOURCE, total: defaultLimits().connections });
  const server = guardedServer(tls, RELAY_KEEP_ALIVE_TIMEOUT_MS, guard, answerPlainRequest);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new AgentVpnError('LISTEN_FAILED', `cannot listen on TCP ${args.listen}: ${e.message}`,
      e.code === 'EADDRINUSE' ? 'another process uses that port: pick another --listen port' : 'check the --listen address')));
    server.listen(port, host, () => resolve());
  });
  const tcpPort = (server.address() as AddressInfo).port;
  let relay: RunningRelay;
  const relayOpts = {
    stunSecondPort: args['stun-second-port'], tcpServer: server, onTcpSession: (s: Duplex) => guard.hold(s), log, names,
    limits: { packetsPerSecond: args.pps, bytesPerSecond: args.bps, burst: { packets: Math.ceil(args.pps / 2), bytes: Math.ceil(args.bps / 2) } },
    allow: allowed?.hook ?? members?.hook,
  };
  try {
    // UDP on the TCP port number; with port 0, any free one when that number is taken for UDP.
    relay = await startRelay({ ...relayOpts, udp: { host, port: tcpPort } }).catch((e) => (port === 0 ? startRelay({ ...relayOpts, udp: { host, port: 0 } }) : Promise.reject(e)));
  } catch (e) {
    members?.stop();
    server.close();
    throw e;
  }
  relayRef = relay;
  const metrics = args.metrics ? await startRelayMetrics(relay, guard, args.metrics, log).catch(async (e) => {
    await relay.stop();
    server.close();
    throw e;
  }) : null;
  const udp = formatHostPort(host, relay.udpPort);
  const tcp = `${tls ? 'https' : 'http'}://${formatHostPort(host, tcpPort)}${UPGRADE_PATH}`;
  const stun = relay.stunSecondPort ? [udp, formatHostPort(host, relay.stunSecondPort)] : [udp];
  const networks = allowed ? allowed.networks : members ? (args.network?.length ? args.network : ['default']) : null;
  printResult(args.json, { udp, tcp, stun, names, allowKeys: allowed ? allowed.keys : members ? members.size : null, networks, registry: args.registry ?? null, metrics: metrics?.url ?? null },
    () => `relay ${names.length ? names.map((n) => `"${n}"`).join(', ') : '(unnamed: takes hellos for the empty name only)'} listening: UDP ${udp}, TCP ${tcp}; STUN on ${stun.join(' and ')}; ` +
      (allowed ? `${allowed.keys} allowed key(s) in network(s) ${allowed.networks.join(', ')}`
        : members ? `members of ${networks!.join(', ')} at ${args.registry} (${members.size} key(s) now, re-read every 10 s)` : 'open to any agent key (one network: any agent can reach any other)'));

  const signal = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  log.info({ signal, event: 'stopping', ...relay.stats() }, 'stopping');
  members?.stop();
  await metrics?.stop();
  await relay.stop();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

export const relayCommand: CommandModule<GlobalArgs, RelayArgs> = {
  command: 'relay',
  describe: 'Run a standalone relay (UDP, TCP fallback on the same port, STUN) in the foreground',
  builder: (y) =>
    y
      .option('listen', { type: 'string', describe: 'HOST:PORT for UDP and TCP, e.g. 0.0.0.0:7443' })
      .option('name', { type: 'string', array: true, describe: "the name the registry advertises this relay under (its --relay-peer NAME=…; repeat for more): it takes only agents' hellos signed for that name. Without: unnamed, for one-relay networks whose registry advertises it without a name" })
      .option('allow-key', { type: 'string', array: true, describe: 'only these agents may use the relay, as [NETWORK:]KEY (agent ID or base64 public key; repeat the option); frames pass only within a network (default "default")' })
      .option('registry', { type: 'string', describe: "follow this registry's members instead of --allow-key: only agents of --network may use the relay (admin token from AGENTVPN_ADMIN_TOKEN or --admin-token-file)" })
      .option('admin-token-file', { type: 'string', describe: 'file holding an admin token of the registry (with --registry)' })
      .option('registry-ca', { type: 'string', describe: "the registry's CA certificate (PEM), for https with --registry" })
      .option('network', { type: 'string', array: true, describe: 'with --registry: the networks whose members may use the relay (repeat; default "default"); frames pass only within a network' })
      .option('tls-cert', { type: 'string', describe: 'TLS certificate (PEM): serve the TCP fallback over HTTPS' })
      .option('tls-key', { type: 'string', describe: 'TLS private key (PEM)' })
      .option('stun-second-port', { type: 'boolean', default: true, describe: 'also answer STUN on the next UDP port (lets agents spot NATs whose mapping varies by destination)' })
      .option('pps', { type: 'number', default: DEFAULT_LIMITS.packetsPerSecond, describe: 'packets per second each agent may relay' })
      .option('bps', { type: 'number', default: DEFAULT_LIMITS.bytesPerSecond, describe: 'bytes per second each agent may relay' })
      .option('metrics', { type: 'string', describe: 'serve Prometheus metrics at http://HOST:PORT/metrics (a PORT alone: 127.0.0.1; default off; they show sessions and traffic)' })
      .option('log-level', { type: 'string', default: process.env.AGENTVPN_LOG_LEVEL ?? 'info', choices: ['debug', 'info', 'warn', 'error'] }) as unknown as Argv<RelayArgs>,
  handler: runCommand(serve),
};
