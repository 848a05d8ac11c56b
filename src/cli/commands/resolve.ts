import type { CommandModule } from 'yargs';
import { resolve } from '../../api.js';
import { interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface ResolveArgs extends GlobalArgs {
  interface: string;
  name: string;
}

export const resolveCommand: CommandModule<GlobalArgs, ResolveArgs> = {
  command: 'resolve <name>',
  describe: 'Print the overlay addresses of an agent (NAME or NAME.<network>)',
  builder: (y) => y.option('interface', interfaceOption).positional('name', { type: 'string', demandOption: true }),
  handler: runCommand(async (args) => {
    const r = await resolve(args.name, { interface: args.interface });
    printResult(args.json, { ...r }, () => `${r.name}\t${r.ipv4}\t${r.ipv6}`);
  }),
};
