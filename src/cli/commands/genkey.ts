import type { CommandModule } from 'yargs';
import { encodeKey } from '../../crypto/keys.js';
import { generatePrivateKey } from '../../crypto/x25519.js';
import { printResult, runCommand, type GlobalArgs } from '../output.js';

export const genkeyCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'genkey',
  describe: 'Print a new private key (base64, like `wg genkey`)',
  handler: runCommand((args) => {
    const privateKey = encodeKey(generatePrivateKey());
    printResult(args.json, { privateKey }, () => privateKey);
  }),
};
