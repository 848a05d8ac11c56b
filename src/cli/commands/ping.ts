import type { CommandModule } from 'yargs';
import { callDaemon } from '../../daemon/control-client.js';
import type { PingReply } from '../../paths/magicsock.js';
import { AgentVpnError } from '../../errors.js';
import { interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface PingArgs extends GlobalArgs {
  interface: string;
  name: string;
  count: number;
}

type Reply = PingReply | { seq: number; timeout: true };

/** One line per reply, like `tailscale ping`: which path carried it and how long it took. */
function formatReply(name: string, ipv4: string, r: Reply): string {
  if ('timeout' in r) return `timeout waiting for ${name} (seq ${r.seq})`;
  const via = r.path === 'direct' ? `direct ${r.endpoint}` : `relay ${r.endpoint}`;
  return `pong from ${name} (${ipv4}) via ${via} in ${r.rttMs} ms`;
}

export const pingCommand: CommandModule<GlobalArgs, PingArgs> = {
  command: 'ping <name>',
  describe: 'Ping an agent over the agentvpn path layer and show whether each reply came direct or through the relay',
  builder: (y) =>
    y.option('interface', interfaceOption)
      .positional('name', { type: 'string', demandOption: true, describe: 'agent name, name.<network>, agent ID or overlay IPv4' })
      .option('count', { alias: 'c', type: 'number', default: 4 }),
  handler: runCommand(async (args) => {
    const result = (await callDaemon(args.interface, 'ping', { name: args.name, count: args.count }, { timeoutMs: 5000 + args.count * 3000 })) as {
      name: string; ipv4: string; replies: Reply[];
    };
    if (result.replies.every((r) => 'timeout' in r)) {
      throw new AgentVpnError('PING_TIMEOUT', `no reply from ${result.name}`, 'check `agentvpn status` for the path and `agentvpn netcheck` for this host\'s NAT');
    }
    printResult(args.json, result, () => result.replies.map((r) => formatReply(result.name, result.ipv4, r)).join('\n'));
  }),
};
