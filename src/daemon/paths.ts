import { validateInterfaceName } from '../tun/interface-name.js';

/** Where a daemon keeps its socket, pid and log; overridable so tests and unprivileged runs need no /run. */
export function runDir(): string {
  return process.env.AGENTVPN_RUN_DIR ?? '/run/agentvpn';
}


export function controlSocketPath(iface: string): string {
  return `${runDir()}/${validateInterfaceName(iface)}.sock`;
}

export function pidFilePath(iface: string): string {
  return `${runDir()}/${validateInterfaceName(iface)}.pid`;
}

export function logFilePath(iface: string): string {
  return `${runDir()}/${validateInterfaceName(iface)}.log`;
}
