import { AgentVpnError } from '../errors.js';

/**
 * The control client's errors, with hints for a program rather than a shell user: where the
 * socket is, and what to change in the program or its deployment.
 */
export function sdkError(e: unknown, iface: string, socketPath: string, method: string): unknown {
  if (!(e instanceof AgentVpnError)) return e;
  switch (e.code) {
    case 'DAEMON_NOT_RUNNING':
      return new AgentVpnError(e.code, `no agentvpn daemon answers on ${socketPath} (interface ${iface})`,
        'start it with `sudo agentvpn up`; connect({ interface }) picks another daemon, AGENTVPN_RUN_DIR or socketPath another socket', { cause: e });
    case 'CONTROL_PERMISSION':
      return new AgentVpnError(e.code, `not allowed to open ${socketPath}: the daemon's control socket is root-only (mode 0600)`,
        'run the agent as root, or in a container that mounts the daemon\'s run dir (docs/containers.md)', { cause: e });
    case 'UNKNOWN_METHOD':
      return new AgentVpnError('NOT_IN_REGISTRY_MODE', `the daemon for interface ${iface} does not offer "${method}"`,
        'discovery, names, ping, whois and events need a daemon in registry mode (`agentvpn up --registry URL`), of the same version as this SDK', { cause: e });
    default:
      return e;
  }
}
