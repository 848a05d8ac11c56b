import { readFileSync } from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { AgentVpnError } from '../errors.js';
import { printError } from './output.js';
import { downCommand } from './commands/down.js';
import { genkeyCommand } from './commands/genkey.js';
import { pubkeyCommand } from './commands/pubkey.js';
import { statusCommand } from './commands/status.js';
import { upCommand } from './commands/up.js';
import { reloadCommand } from './commands/reload.js';
import { idCommand } from './commands/id.js';
import { peersCommand } from './commands/peers.js';
import { resolveCommand } from './commands/resolve.js';
import { whoisCommand } from './commands/whois.js';
import { pingCommand } from './commands/ping.js';
import { demoCommand } from './commands/demo.js';
import { registryCommand } from './commands/registry.js';
import { relayCommand } from './commands/relay.js';
import { netcheckCommand } from './commands/netcheck.js';
import { policyCommand } from './commands/policy.js';
import { trustCommand } from './commands/trust.js';
import { keyCommand } from './commands/key.js';
import { auditCommand } from './commands/audit.js';
import { wgUserspaceCommand } from './commands/wg-userspace.js';

// package.json sits two levels up from both src/cli/ and dist/cli/.
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
const args = hideBin(process.argv);
// Usage errors happen before yargs has parsed --json, so look for it directly.
const json = args.some((a) => a === '--json' || a === '--json=true');

await yargs(args)
  .scriptName('agentvpn')
  .usage('$0 <command> [options]')
  .option('json', { type: 'boolean', default: false, global: true, describe: 'Print machine-readable JSON' })
  .command(upCommand)
  .command(downCommand)
  .command(reloadCommand)
  .command(statusCommand)
  .command(idCommand)
  .command(peersCommand)
  .command(resolveCommand)
  .command(whoisCommand)
  .command(pingCommand)
  .command(demoCommand)
  .command(registryCommand)
  .command(relayCommand)
  .command(netcheckCommand)
  .command(policyCommand)
  .command(trustCommand)
  .command(keyCommand)
  .command(auditCommand)
  .command(wgUserspaceCommand)
  .command(genkeyCommand)
  .command(pubkeyCommand)
  .demandCommand(1, 'no command given')
  .strict()
  .version(pkg.version)
  .help()
  .alias('help', 'h')
  .wrap(null)
  .fail((msg, err) => {
    printError(err ?? new AgentVpnError('USAGE', msg, 'run `agentvpn --help` to see the commands and their options'), json);
    process.exit(1);
  })
  .parseAsync();
