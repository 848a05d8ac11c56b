/**
 * The kernel side of the TUN interface: addresses, MTU, link state and routes, set with
 * iproute2's `ip` (run directly, no shell). Every failure names the exact command.
 */
import { execFile } from 'node:child_process';
import { AgentVpnError } from '../errors.js';
import { formatPrefix, networkOf, type Prefix } from '../ip/prefix.js';

const HINT = 'agentvpn needs root or CAP_NET_ADMIN and the ip command (iproute2); run the command above by hand to see why it fails';

/** Run `ip args...`; resolve, or reject with INTERFACE_CONFIG unless stderr matches `ignore`. */
function ip(args: string[], ignore?: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('ip', args, { timeout: 10_000 }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const command = ['ip', ...args].join(' ');
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        return reject(new AgentVpnError('INTERFACE_CONFIG', `${command}: the ip command is not installed`, 'install iproute2 (apt install iproute2)', { cause: err }));
      }
      const text = String(stderr).trim() || err.message;
      if (ignore?.test(text)) return resolve();
      reject(new AgentVpnError('INTERFACE_CONFIG', `${command} failed: ${text}`, HINT, { cause: err }));
    });
  });
}

const familyFlag = (p: Prefix) => (p.family === 4 ? '-4' : '-6');

/** Set the MTU, add the addresses and bring the link up. The MTU comes first: IPv6 needs at least 1280, and
 *  lowering the MTU below that later would silently drop the IPv6 addresses. */
export async function configureInterface(name: string, opts: { addresses: Prefix[]; mtu: number }): Promise<void> {
  await ip(['link', 'set', 'dev', name, 'mtu', String(opts.mtu)]);
  for (const a of opts.addresses) {
    // replace = add, but idempotent. A TUN has no neighbours to collide with: skip duplicate address detection.
    const args = [familyFlag(a), 'addr', 'replace', formatPrefix(a), 'dev', name];
    await ip(a.family === 6 ? [...args, 'nodad'] : args);
  }
  await ip(['link', 'set', 'dev', name, 'up']);
}

/** Route each prefix into the interface (replacing any route to the same prefix). */
export async function addRoutes(name: string, prefixes: Prefix[]): Promise<void> {
  for (const p of prefixes) await ip([familyFlag(p), 'route', 'replace', formatPrefix(networkOf(p)), 'dev', name]);
}

/** Remove routes added by addRoutes; routes (or an interface) already gone are fine. */
export async function removeRoutes(name: string, prefixes: Prefix[]): Promise<void> {
  for (const p of prefixes) {
    await ip([familyFlag(p), 'route', 'del', formatPrefix(networkOf(p)), 'dev', name], /No such process|Cannot find device/);
  }
}

/** Delete the interface; one that no longer exists is fine. */
export async function deleteInterface(name: string): Promise<void> {
  await ip(['link', 'del', 'dev', name], /Cannot find device/);
}
