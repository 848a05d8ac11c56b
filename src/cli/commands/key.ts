import type { CommandModule } from 'yargs';
import { callDaemon } from '../../daemon/control-client.js';
import { fingerprint } from '../../trust/store.js';
import { interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

/** What the daemon's keyRotate answers: the (unchanged) ID, the new chain position and key. */
export interface KeyRotation {
  id: string;
  seq: number;
  key: string;
}

interface RotateArgs extends GlobalArgs {
  interface: string;
}

/** Rotation goes through the daemon: it writes the new key first, then publishes the chain and re-keys its tunnels. */
const rotateCommand: CommandModule<GlobalArgs, RotateArgs> = {
  command: 'rotate',
  describe: 'Move this agent to its pre-committed next key (ID, name and addresses stay; peers follow the signed chain)',
  builder: (y) => y.option('interface', interfaceOption),
  handler: runCommand(async (args) => {
    // Writing the state and publishing the chain may take a few registry round trips.
    const r = (await callDaemon(args.interface, 'keyRotate', {}, { timeoutMs: 30_000 })) as KeyRotation;
    printResult(args.json, { ...r }, () => `rotated ${r.id} to key ${fingerprint(r.key)} (rotation ${r.seq})`);
  }),
};

export const keyCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'key <command>',
  describe: "Manage this agent's Ed25519 key",
  builder: (y) => y.command(rotateCommand).demandCommand(1, 'no key command given (rotate)'),
  handler: () => {},
};
