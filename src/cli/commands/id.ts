import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CommandModule } from 'yargs';
import { callDaemon } from '../../daemon/control-client.js';
import { AgentVpnError } from '../../errors.js';
import { DEFAULT_STATE_DIR, Identity, hasIdentity, stateDir } from '../../identity/identity.js';
import { columns, interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface IdArgs extends GlobalArgs {
  interface: string;
  'state-dir'?: string;
  network: string;
}

/** Identity as the running daemon knows it, or, with no daemon, from the state directory. */
async function describe(args: IdArgs): Promise<Record<string, unknown>> {
  try {
    return (await callDaemon(args.interface, 'id')) as Record<string, unknown>;
  } catch (e) {
    if (!(e instanceof AgentVpnError) || !['DAEMON_NOT_RUNNING', 'UNKNOWN_METHOD'].includes(e.code)) throw e;
  }
  const dir = stateDir(args['state-dir']);
  if (!hasIdentity(dir)) {
    throw new AgentVpnError('NO_IDENTITY', `no agent identity in ${dir}`, 'it is created by the first `sudo agentvpn up --registry ...` (or pass --state-dir)');
  }
  const identity = Identity.loadOrCreate(dir);
  const joinFile = join(dir, `join-${args.network}.json`);
  const joined = existsSync(joinFile) ? (JSON.parse(readFileSync(joinFile, 'utf8')) as Record<string, unknown>) : {};
  return { id: identity.id, wgPublicKey: Buffer.from(identity.wgPublicKey).toString('base64'), network: args.network, ipv4: joined.ipv4 ?? null, ipv6: joined.ipv6 ?? null, running: false };
}

export const idCommand: CommandModule<GlobalArgs, IdArgs> = {
  command: 'id',
  describe: "Print this agent's ID, name and permanent overlay addresses",
  builder: (y) =>
    y.option('interface', interfaceOption)
      .option('state-dir', { type: 'string', describe: `identity directory (default ${DEFAULT_STATE_DIR})` })
      .option('network', { type: 'string', default: 'default' }),
  handler: runCommand(async (args) => {
    const info = await describe(args);
    printResult(args.json, info, () => columns(Object.entries(info).filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => [`${k}:`, Array.isArray(v) ? v.join(' ') : String(v)])));
  }),
};
