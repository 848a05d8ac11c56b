import type { CommandModule } from 'yargs';
import { AgentVpnError } from '../../errors.js';
import { runCommand, type GlobalArgs } from '../output.js';

// Placeholder so the CLI builds; the real `up` (daemon start) replaces this file.
export const upCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'up',
  describe: 'Start the daemon for an interface',
  handler: runCommand(() => {
    throw new AgentVpnError('NOT_IMPLEMENTED', '`agentvpn up` is not implemented yet', 'use a build that includes the daemon');
  }),
};
