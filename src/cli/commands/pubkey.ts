import type { CommandModule } from 'yargs';
import { AgentVpnError } from '../../errors.js';
import { decodeKey, encodeKey } from '../../crypto/keys.js';
import { publicKeyOf } from '../../crypto/x25519.js';
import { printResult, runCommand, type GlobalArgs } from '../output.js';

// A key line is 44 characters; anything much longer is not a key, so stop reading.
const MAX_INPUT = 4096;

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of process.stdin) {
    chunks.push(chunk as Buffer);
    total += (chunk as Buffer).length;
    if (total > MAX_INPUT) {
      throw new AgentVpnError('BAD_KEY', 'input is too long to be a private key', 'pipe in one key, e.g. `agentvpn genkey | agentvpn pubkey`');
    }
  }
  return Buffer.concat(chunks).toString('utf8');
}

export const pubkeyCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'pubkey',
  describe: 'Read a private key on stdin and print its public key (like `wg pubkey`)',
  handler: runCommand(async (args) => {
    // x25519 clamps the scalar itself, so unclamped input gives the same answer as `wg pubkey`.
    const publicKey = encodeKey(publicKeyOf(decodeKey(await readStdin(), 'private key')));
    printResult(args.json, { publicKey }, () => publicKey);
  }),
};
