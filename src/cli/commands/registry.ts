import type { Argv, CommandModule } from 'yargs';
import pino from 'pino';
import { AgentVpnError } from '../../errors.js';
import { DEFAULT_NETWORK, DEFAULT_OFFLINE_AFTER_MS, DEFAULT_POOL } from '../../registry/protocol.js';
import { createJoinToken, startRegistry } from '../../registry/server.js';
import { SqliteStore } from '../../registry/sqlite-store.js';
import { printResult, runCommand, type GlobalArgs } from '../output.js';

interface ServeArgs extends GlobalArgs {
  listen?: string;
  db?: string;
  network: string;
  pool: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  'offline-after': number;
  relay: boolean;
  'log-level': string;
}

interface TokenArgs extends GlobalArgs {
  db: string;
  network: string;
  expires: string;
  uses?: number;
}

const UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "24h", "30m", "7d", "90s" → milliseconds; "never" → null. */
export function parseExpiry(text: string): number | null {
  if (text === 'never') return null;
  const m = /^(\d{1,6})([smhd])$/.exec(text);
  if (!m || Number(m[1]) === 0) {
    throw new AgentVpnError('BAD_EXPIRY', `invalid --expires "${text}"`, 'give a duration like 90s, 30m, 24h or 7d, or "never"');
  }
  return Number(m[1]) * UNITS[m[2]];
}

async function serve(args: ServeArgs): Promise<void> {
  if (!args.listen || !args.db) {
    throw new AgentVpnError('USAGE', 'the registry needs --listen HOST:PORT and --db FILE', 'e.g. agentvpn registry --listen 0.0.0.0:7443 --db /var/lib/agentvpn/registry.db');
  }
  if (!(args['offline-after'] > 0)) throw new AgentVpnError('USAGE', '--offline-after must be a positive number of seconds', 'e.g. --offline-after 30');
  const log = pino({ level: args['log-level'], base: { component: 'registry' } }, pino.destination(2));
  const registry = await startRegistry({
    listen: args.listen, db: args.db, network: args.network, pool: args.pool, tlsCert: args['tls-cert'], tlsKey: args['tls-key'],
    offlineAfterMs: Math.round(args['offline-after'] * 1000), relay: args.relay, log,
  });
  const relay = registry.relay && { udpPort: registry.relay.udpPort, stunPorts: [registry.relay.udpPort, registry.relay.stunSecondPort] };
  printResult(args.json, { url: registry.url, port: registry.port, network: args.network, db: args.db, relay },
    () => `registry listening on ${registry.url} (network ${args.network}, database ${args.db})\n` +
      (relay ? `relay and STUN on UDP ${relay.udpPort} (STUN also on ${relay.stunPorts[1]}), relay over TCP at ${registry.url}/v1/relay` : 'relay and STUN off (--no-relay)'));
  const signal = await new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  log.info({ signal, event: 'stopping' }, 'stopping');
  await registry.stop();
}

async function createToken(args: TokenArgs): Promise<void> {
  const expiresInMs = parseExpiry(args.expires);
  const store = new SqliteStore(args.db);
  let token: string;
  try {
    token = await createJoinToken(store, { network: args.network, expiresInMs, uses: args.uses ?? null });
  } finally {
    await store.close();
  }
  const expiresAt = expiresInMs === null ? null : new Date(Date.now() + expiresInMs).toISOString();
  printResult(args.json, { token, network: args.network, expiresAt, uses: args.uses ?? null }, () => token);
  if (!args.json) {
    process.stderr.write(`join token for network ${args.network}, ${expiresAt ? `expires ${expiresAt}` : 'never expires'}, ` +
      `${args.uses ? `${args.uses} use(s)` : 'unlimited uses'}; it is shown only this once (the registry keeps only its hash)\n`);
  }
}

const dbOption = { type: 'string', describe: 'registry SQLite database file (created with mode 0600)' } as const;
const networkOption = { type: 'string', default: DEFAULT_NETWORK, describe: 'network name' } as const;

const tokenCreateCommand: CommandModule<GlobalArgs, TokenArgs> = {
  command: 'create',
  describe: 'Create a join token for a network (printed once; stored hashed)',
  builder: (y) =>
    y
      .option('db', { ...dbOption, demandOption: true })
      .option('network', networkOption)
      .option('expires', { type: 'string', default: '24h', describe: 'lifetime: 90s, 30m, 24h, 7d … or never' })
      .option('uses', { type: 'number', describe: 'how many agents may join with it (default: unlimited)' }) as unknown as Argv<TokenArgs>,
  handler: runCommand(createToken),
};

const tokenCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'token',
  describe: 'Manage join tokens',
  builder: (y) => y.command(tokenCreateCommand).demandCommand(1, 'say what to do with tokens: create'),
  handler: () => {},
};

export const registryCommand: CommandModule<GlobalArgs, ServeArgs> = {
  command: 'registry',
  describe: 'Run the registry (rendezvous) server in the foreground, or manage its join tokens',
  builder: (y) =>
    y
      .command(tokenCommand)
      .option('listen', { type: 'string', describe: 'HOST:PORT to serve on, e.g. 0.0.0.0:7443' })
      .option('db', dbOption)
      .option('network', { ...networkOption, describe: 'network for requests that name none' })
      .option('pool', { type: 'string', default: DEFAULT_POOL, describe: 'IPv4 pool agents get their sticky address from' })
      .option('tls-cert', { type: 'string', describe: 'TLS certificate (PEM); serve HTTPS' })
      .option('tls-key', { type: 'string', describe: 'TLS private key (PEM)' })
      .option('offline-after', { type: 'number', default: DEFAULT_OFFLINE_AFTER_MS / 1000, describe: 'seconds without heartbeat before an agent is offline' })
      .option('relay', { type: 'boolean', default: true, describe: 'run the built-in relay and STUN (UDP on the same port number, STUN also on the next; --no-relay turns them off)' })
      .option('log-level', { type: 'string', default: process.env.AGENTVPN_LOG_LEVEL ?? 'info', choices: ['debug', 'info', 'warn', 'error'] }) as unknown as Argv<ServeArgs>,
  handler: runCommand(serve),
};
