import type { CommandModule } from 'yargs';
import { whois } from '../../api.js';
import { columns, interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface WhoisArgs extends GlobalArgs {
  interface: string;
  address: string;
}

export const whoisCommand: CommandModule<GlobalArgs, WhoisArgs> = {
  command: 'whois <address>',
  describe: 'Name the agent that holds an overlay address (ADDR, ADDR:PORT or [ADDR6]:PORT)',
  builder: (y) => y.option('interface', interfaceOption).positional('address', { type: 'string', demandOption: true }),
  handler: runCommand(async (args) => {
    const w = await whois(args.address, { interface: args.interface });
    printResult(args.json, { ...w }, () => columns([
      ['name:', w.name],
      ['id:', w.id],
      ['address:', w.port === null ? w.address : `${w.address} port ${w.port}`],
      ['tags:', w.tags.join(', ') || '(none)'],
      ['capabilities:', w.capabilities.join(', ') || '(none)'],
      ['app capabilities:', Object.keys(w.app).length ? JSON.stringify(w.app) : '(none)'],
      ['online:', w.online ? 'yes' : 'no'],
    ], '  '));
  }),
};
