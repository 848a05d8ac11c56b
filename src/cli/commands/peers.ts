import type { CommandModule } from 'yargs';
import { discover } from '../../api.js';
import { columns, formatAgo, interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface PeersArgs extends GlobalArgs {
  interface: string;
  cap?: string;
}

export const peersCommand: CommandModule<GlobalArgs, PeersArgs> = {
  command: 'peers',
  describe: 'List the agents of the network (fleet mode), optionally those with a capability',
  builder: (y) =>
    y.option('interface', interfaceOption)
      .option('cap', { type: 'string', describe: 'exact capability match: name[@version][;key=value]' }),
  handler: runCommand(async (args) => {
    const peers = await discover({ interface: args.interface, cap: args.cap });
    printResult(args.json, { peers }, () => {
      if (peers.length === 0) return args.cap ? `no agent has capability ${args.cap}` : 'no other agents in the network yet';
      const rows = [['NAME', 'IPV4', 'IPV6', 'STATE', 'CAPABILITIES']];
      for (const p of peers) {
        rows.push([p.name, p.ipv4, p.ipv6, p.online ? 'online' : `offline (${formatAgo(p.lastSeen)})`, p.capabilities.join(' ') || '-']);
      }
      return columns(rows);
    });
  }),
};
