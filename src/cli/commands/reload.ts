import type { CommandModule } from 'yargs';
import { callDaemon } from '../../daemon/control-client.js';
import type { ReloadReport } from '../../daemon/reload.js';
import { interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

// A capability change is recorded in the audit log before the answer; that may take a disk flush.
const RELOAD_TIMEOUT_MS = 15_000;

interface ReloadArgs extends GlobalArgs {
  interface: string;
}

export const reloadCommand: CommandModule<GlobalArgs, ReloadArgs> = {
  command: 'reload',
  describe: 'Re-read the daemon\'s --config-file and apply what changed (capabilities, log level, policy) without dropping tunnels; same as SIGHUP',
  builder: (y) => y.option('interface', interfaceOption),
  handler: runCommand(async (args) => {
    const report = (await callDaemon(args.interface, 'reload', {}, { timeoutMs: RELOAD_TIMEOUT_MS })) as ReloadReport;
    printResult(args.json, { interface: args.interface, ...report }, () => `${args.interface}: ${report.message}`);
  }),
};
