import { readFileSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { createLogger, type LogLevel } from '../../util/logger.js';
import { AgentVpnError } from '../../errors.js';
import { readAdminToken } from '../admin-token.js';
import { DEFAULT_NETWORK, DEFAULT_OFFLINE_AFTER_MS, DEFAULT_POOL } from '../../registry/protocol.js';
import { createJoinToken, startRegistry } from '../../registry/server.js';
import { startRegistryWithRelay } from '../registry-with-relay.js';
import { parseRelayPeer } from '../../registry/relay-list.js';
import { createAdminToken } from '../../registry/admin-auth.js';
import { AdminClient } from '../../registry/admin-client.js';
import { getPolicy, listAgents, removeAgent, setPolicy, type AgentListing } from '../../registry/operator.js';
import { REGISTRY_DB_ENV, openStore } from '../../registry/open-store.js';
import { redactDbUrl } from '../../registry/pg-store.js';
import { RegistryMetrics } from '../../metrics/registry.js';
import { parseMetricsListen } from '../../metrics/listen.js';
import type { RegistryStore } from '../../registry/store.js';
import { columns, printResult, runCommand, type GlobalArgs } from '../output.js';
import { registryAuditCommand } from './registry-audit.js';
import { parseDuration } from '../duration.js';

interface ServeArgs extends GlobalArgs {
  listen?: string;
  db?: string;
  network: string;
  pool: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  'offline-after': number;
  relay: boolean;
  'relay-peer'?: string[];
  'relay-name'?: string;
  'relay-region'?: string;
  'log-level': string;
  'witness-key'?: string;
  'witness-host'?: string;
  'audit-dir'?: string;
  metrics?: string;
}

interface TokenArgs extends GlobalArgs {
  db: string;
  network: string;
  expires: string;
  uses?: number;
  tag?: string[];
}

interface DbArgs extends GlobalArgs {
  db?: string;
  network: string;
  registry?: string;
  'admin-token-file'?: string;
  'registry-ca'?: string;
}

interface AgentArgs extends DbArgs {
  target: string;
}

interface PolicySetArgs extends DbArgs {
  file: string;
}

/** "24h", "30m", "7d", "90s" → milliseconds; "never" → null. */
export function parseExpiry(text: string): number | null {
  return text === 'never' ? null : parseDuration(text, '--expires');
}

async function serve(args: ServeArgs): Promise<void> {
  if (!args.listen || !args.db) {
    throw new AgentVpnError('USAGE', 'the registry needs --listen HOST:PORT and --db FILE (or a postgres:// URL, also from AGENTVPN_REGISTRY_DB)', 'e.g. agentvpn registry --listen 0.0.0.0:7443 --db /var/lib/agentvpn/registry.db');
  }
  if (!(args['offline-after'] > 0)) throw new AgentVpnError('USAGE', '--offline-after must be a positive number of seconds', 'e.g. --offline-after 30');
  if (args.metrics) parseMetricsListen(args.metrics); // a bad address is refused before anything starts
  const log = createLogger(args['log-level'] as LogLevel, { component: 'registry' });
  const metrics = args.metrics ? new RegistryMetrics() : null;
  const registryOpts = {
    listen: args.listen, db: args.db, network: args.network, pool: args.pool, tlsCert: args['tls-cert'], tlsKey: args['tls-key'],
    offlineAfterMs: Math.round(args['offline-after'] * 1000), log, relayPeers: (args['relay-peer'] ?? []).map(parseRelayPeer),
    witnessKey: args['witness-key'], witnessHost: args['witness-host'], auditDir: args['audit-dir'], requestObserver: metrics?.observe,
  };
  // The built-in relay runs beside the registry, composed here (registry-with-relay.ts); --no-relay: the registry alone.
  const registry = args.relay
    ? await startRegistryWithRelay({ ...registryOpts, relayName: args['relay-name'], relayRegion: args['relay-region'] })
    : { ...await startRegistry(registryOpts), relay: null };
  metrics?.watch(registry);
  const metricsServer = metrics && args.metrics ? await metrics.serve(args.metrics, log).catch(async (e) => {
    await registry.stop();
    throw e;
  }) : null;
  const relay = registry.relay && { udpPort: registry.relay.udpPort, stunPorts: [registry.relay.udpPort, registry.relay.stunSecondPort] };
  const relayPeers = (args['relay-peer'] ?? []).map((t) => parseRelayPeer(t).name);
  printResult(args.json, { url: registry.url, port: registry.port, network: args.network, db: redactDbUrl(args.db!), relay, relayPeers, witness: registry.witness, metrics: metricsServer?.url ?? null },
    () => `registry listening on ${registry.url} (network ${args.network}, database ${redactDbUrl(args.db!)})\n` +
      `audit witness ${registry.witness.name} ${registry.witness.publicKey}\n` +
      (relay ? `relay and STUN on UDP ${relay.udpPort} (STUN also on ${relay.stunPorts[1]}), relay over TCP at ${registry.url}/v1/relay` : 'relay and STUN off (--no-relay)') +
      (relayPeers.length ? `\nalso advertising relay(s) ${relayPeers.join(', ')}` : ''));
  const signal = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  log.info({ signal, event: 'stopping' }, 'stopping');
  await metricsServer?.stop();
  await registry.stop();
}

/** Runs `work` on the registry database (a running registry on it picks changes up within a second). */
async function withStore<T>(db: string, work: (store: RegistryStore) => Promise<T>): Promise<T> {
  const store = await openStore(db);
  try {
    return await work(store);
  } finally {
    await store.close();
  }
}

async function createToken(args: TokenArgs): Promise<void> {
  const expiresInMs = parseExpiry(args.expires);
  const tags = args.tag ?? [];
  const token = await withStore(args.db, (store) => createJoinToken(store, { network: args.network, expiresInMs, uses: args.uses ?? null, tags }));
  const expiresAt = expiresInMs === null ? null : new Date(Date.now() + expiresInMs).toISOString();
  printResult(args.json, { token, network: args.network, expiresAt, uses: args.uses ?? null, tags }, () => token);
  if (!args.json) {
    process.stderr.write(`join token for network ${args.network}, ${expiresAt ? `expires ${expiresAt}` : 'never expires'}, ` +
      `${args.uses ? `${args.uses} use(s)` : 'unlimited uses'}${tags.length ? `, tags ${tags.join(' ')}` : ''}; it is shown only this once (the registry keeps only its hash)\n`);
  }
}

/** What the agent and policy commands act on: the database (--db) or a registry's admin API (--registry). */
interface Operator {
  list(): Promise<AgentListing>;
  remove(target: string, block: boolean): Promise<{ id: string; name: string }>;
  setPolicy(text: string): Promise<{ version: number }>;
  getPolicy(): Promise<{ version: number; policy: string; setAt: number } | null>;
}

/** The admin token: never on the command line (other users see it in ps). */
function adminToken(args: DbArgs): string {
  return readAdminToken(args['admin-token-file']);
}

async function withOperator<T>(args: DbArgs, work: (op: Operator) => Promise<T>): Promise<T> {
  if ((args.db === undefined) === (args.registry === undefined)) {
    throw new AgentVpnError('USAGE', 'say where the registry is: --db FILE (its database) or --registry URL (its admin API)', 'e.g. --db /var/lib/agentvpn/registry.db');
  }
  if (args.registry !== undefined) return work(new AdminClient(args.registry, adminToken(args), args.network, args['registry-ca']));
  return withStore(args.db!, (store) => work({
    list: () => listAgents(store, args.network),
    remove: (target, block) => removeAgent(store, args.network, target, block),
    setPolicy: (text) => setPolicy(store, args.network, text),
    getPolicy: async () => {
      const p = await getPolicy(store, args.network);
      return p && { version: p.version, policy: p.text, setAt: p.setAt };
    },
  }));
}

async function agentList(args: DbArgs): Promise<void> {
  const listing = await withOperator(args, (op) => op.list());
  printResult(args.json, { ...listing }, () => {
    const rows = [['NAME', 'IPV4', 'STATE', 'TAGS', 'ID']];
    for (const a of listing.agents) rows.push([a.name, a.ipv4, a.published ? (a.online ? 'online' : 'offline') : 'joined', a.tags.join(',') || '-', a.id]);
    for (const b of listing.blocked) rows.push([b.name || '-', '-', 'blocked', '-', b.id]);
    return rows.length > 1 ? columns(rows) : `no agents in network ${args.network}`;
  });
}

function agentRemover(block: boolean) {
  return async (args: AgentArgs): Promise<void> => {
    const r = await withOperator(args, (op) => op.remove(args.target, block));
    printResult(args.json, { network: args.network, id: r.id, name: r.name, blocked: block },
      () => `${block ? 'blocked' : 'removed'} ${r.name || r.id} in network ${args.network}${block ? ' (it cannot join again)' : ''}; peers drop it within seconds`);
  };
}

async function adminTokenCreate(args: { db: string; json: boolean }): Promise<void> {
  const token = await withStore(args.db, (store) => createAdminToken(store));
  printResult(args.json, { token }, () => token);
  if (!args.json) process.stderr.write('admin token for the registry admin API (Authorization: Bearer ...); shown only this once (the registry keeps only its hash)\n');
}

async function policySet(args: PolicySetArgs): Promise<void> {
  let text: string;
  try {
    text = readFileSync(args.file, 'utf8');
  } catch (e) {
    throw new AgentVpnError('POLICY_FILE', `cannot read policy file ${args.file}: ${(e as Error).message}`, 'check the path and its permissions');
  }
  const p = await withOperator(args, (op) => op.setPolicy(text));
  printResult(args.json, { network: args.network, version: p.version }, () => `policy version ${p.version} set for network ${args.network}; agents get it within seconds`);
}

async function policyGet(args: DbArgs): Promise<void> {
  const p = await withOperator(args, (op) => op.getPolicy());
  printResult(args.json, { network: args.network, policy: p },
    () => (p ? `// version ${p.version}, set ${new Date(p.setAt).toISOString()}\n${p.policy.replace(/\n$/, '')}` : `no policy in network ${args.network} (everything is allowed)`));
}

/** A database URL may hold a password: it can come from the environment (not shown by ps), and is never printed. */
const dbOption = {
  type: 'string', default: process.env[REGISTRY_DB_ENV], defaultDescription: `$${REGISTRY_DB_ENV}`,
  describe: 'registry database: a SQLite file (created with mode 0600), or postgres://USER@HOST/DB for several instances on one PostgreSQL database',
} as const;
const networkOption = { type: 'string', default: DEFAULT_NETWORK, describe: 'network name' } as const;

const tokenCreateCommand: CommandModule<GlobalArgs, TokenArgs> = {
  command: 'create',
  describe: 'Create a join token for a network (printed once; stored hashed)',
  builder: (y) =>
    y
      .option('db', { ...dbOption, demandOption: true })
      .option('network', networkOption)
      .option('expires', { type: 'string', default: '24h', describe: 'lifetime: 90s, 30m, 24h, 7d … or never' })
      .option('uses', { type: 'number', describe: 'how many agents may join with it (default: unlimited)' })
      .option('tag', { type: 'string', array: true, describe: 'a tag every agent joining with it gets (repeat: --tag gpu --tag prod)' }) as unknown as Argv<TokenArgs>,
  handler: runCommand(createToken),
};

const tokenCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'token',
  describe: 'Manage join tokens',
  builder: (y) => y.command(tokenCreateCommand).demandCommand(1, 'say what to do with tokens: create'),
  handler: () => {},
};

/** --db (the database) or --registry (its admin API), and --network, for the agent and policy commands. */
const onDb = <T>(y: Argv<GlobalArgs>) =>
  y
    .option('db', dbOption)
    .option('network', networkOption)
    .option('registry', { type: 'string', describe: "instead of --db: the registry's URL, to use its admin API (token from AGENTVPN_ADMIN_TOKEN or --admin-token-file)" })
    .option('admin-token-file', { type: 'string', describe: 'file holding the admin token (with --registry)' })
    .option('registry-ca', { type: 'string', describe: "the registry's CA certificate (PEM), for https with --registry" }) as unknown as Argv<T>;

const agentCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'agent',
  describe: 'List, remove or block the agents of a network',
  builder: (y) =>
    y
      .command<DbArgs>({ command: 'list', describe: 'List members (and blocked IDs)', builder: (a) => onDb<DbArgs>(a), handler: runCommand(agentList) })
      .command<AgentArgs>({
        command: 'remove <target>', describe: 'Remove an agent (NAME or ID): peers drop it; it may re-join with a token',
        builder: (a) => onDb<AgentArgs>(a).positional('target', { type: 'string', demandOption: true }) as unknown as Argv<AgentArgs>, handler: runCommand(agentRemover(false)),
      })
      .command<AgentArgs>({
        command: 'block <target>', describe: 'Remove an agent (NAME or ID) and block its ID from joining again',
        builder: (a) => onDb<AgentArgs>(a).positional('target', { type: 'string', demandOption: true }) as unknown as Argv<AgentArgs>, handler: runCommand(agentRemover(true)),
      })
      .demandCommand(1, 'say what to do: list, remove or block'),
  handler: () => {},
};

const adminTokenCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'admin-token',
  describe: 'Manage admin tokens (for the admin API)',
  builder: (y) =>
    y
      .command<{ db: string; json: boolean }>({
        command: 'create', describe: 'Create an admin token (printed once; stored hashed)',
        builder: (a) => a.option('db', { ...dbOption, demandOption: true }) as unknown as Argv<{ db: string; json: boolean }>, handler: runCommand(adminTokenCreate),
      })
      .demandCommand(1, 'say what to do with admin tokens: create'),
  handler: () => {},
};

const policyCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'policy',
  describe: "Set or show a network's policy (pushed to its agents)",
  builder: (y) =>
    y
      .command<PolicySetArgs>({
        command: 'set <file>', describe: 'Check a policy file (JSON with comments) and store it as the next version',
        builder: (a) => onDb<PolicySetArgs>(a).positional('file', { type: 'string', demandOption: true }) as unknown as Argv<PolicySetArgs>, handler: runCommand(policySet),
      })
      .command<DbArgs>({ command: 'get', describe: 'Show the current policy', builder: (a) => onDb<DbArgs>(a), handler: runCommand(policyGet) })
      .demandCommand(1, 'say what to do with the policy: set or get'),
  handler: () => {},
};

export const registryCommand: CommandModule<GlobalArgs, ServeArgs> = {
  command: 'registry',
  describe: 'Run the registry (rendezvous) server in the foreground, or manage its tokens, agents and policy',
  builder: (y) =>
    y
      .command(tokenCommand)
      .command(agentCommand)
      .command(adminTokenCommand)
      .command(policyCommand)
      .command(registryAuditCommand)
      .option('listen', { type: 'string', describe: 'HOST:PORT to serve on, e.g. 0.0.0.0:7443' })
      .option('db', dbOption)
      .option('network', { ...networkOption, describe: 'network for requests that name none' })
      .option('pool', { type: 'string', default: DEFAULT_POOL, describe: 'IPv4 pool agents get their sticky address from' })
      .option('tls-cert', { type: 'string', describe: 'TLS certificate (PEM); serve HTTPS' })
      .option('tls-key', { type: 'string', describe: 'TLS private key (PEM)' })
      .option('offline-after', { type: 'number', default: DEFAULT_OFFLINE_AFTER_MS / 1000, describe: 'seconds without heartbeat before an agent is offline' })
      .option('relay', { type: 'boolean', default: true, describe: 'run the built-in relay and STUN (UDP on the same port number, STUN also on the next; --no-relay turns them off)' })
      .option('relay-peer', { type: 'string', array: true, describe: 'also advertise a standalone relay, as NAME=udp://HOST:PORT[,tcp=URL][,region=REGION] (repeat the option); agents choose the nearest' })
      .option('relay-name', { type: 'string', describe: 'the built-in relay\'s name in the advertised list (default: registry)' })
      .option('relay-region', { type: 'string', describe: 'the built-in relay\'s region label (default: default)' })
      .option('witness-key', { type: 'string', describe: 'the witness key file that cosigns agents\' audit checkpoints (created with mode 0600 on first start; default: DB.witness-key)' })
      .option('witness-host', { type: 'string', describe: 'the host part of the witness key name (default: registry)' })
      .option('audit-dir', { type: 'string', describe: "the registry's own audit log directory (default: DB.audit)" })
      .option('metrics', { type: 'string', describe: 'serve Prometheus metrics at http://HOST:PORT/metrics (a PORT alone: 127.0.0.1; default off; they show agents, requests and relay traffic)' })
      .option('log-level', { type: 'string', default: process.env.AGENTVPN_LOG_LEVEL ?? 'info', choices: ['debug', 'info', 'warn', 'error'] }) as unknown as Argv<ServeArgs>,
  handler: runCommand(serve),
};
