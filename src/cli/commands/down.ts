import type { CommandModule } from 'yargs';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentVpnError } from '../../errors.js';
import { callDaemon, isDaemonAnswering } from '../../daemon/control-client.js';
import { logFilePath, pidFilePath } from '../../daemon/paths.js';
import { interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

// Long enough for the daemon to say goodbye to peers and remove its TUN device.
const DOWN_TIMEOUT_MS = 10_000;
const POLL_MS = 100;

interface DownArgs extends GlobalArgs {
  interface: string;
}

export const downCommand: CommandModule<GlobalArgs, DownArgs> = {
  command: 'down',
  describe: 'Stop the daemon of an interface',
  builder: (y) => y.option('interface', interfaceOption),
  handler: runCommand(async (args) => {
    const iface = args.interface;
    try {
      await callDaemon(iface, 'shutdown');
    } catch (e) {
      // A daemon that exits before its reply arrives is going down all the same.
      if (!(e instanceof AgentVpnError && e.code === 'DAEMON_CLOSED')) throw e;
    }
    const deadline = Date.now() + DOWN_TIMEOUT_MS;
    while (await isDaemonAnswering(iface)) {
      if (Date.now() > deadline) {
        throw new AgentVpnError('DOWN_TIMEOUT', `the agentvpn daemon for interface ${iface} still answers ${DOWN_TIMEOUT_MS / 1000} s after shutdown`,
          `check its log at ${logFilePath(iface)}; if it is hung, kill the pid in ${pidFilePath(iface)}`);
      }
      await sleep(POLL_MS);
    }
    printResult(args.json, { interface: iface }, () => `${iface} is down`);
  }),
};
