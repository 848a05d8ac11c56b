import { AgentVpnError } from '../errors.js';

export const DEFAULT_INTERFACE = 'agentvpn0';

/** Linux limits interface names to 15 bytes (IFNAMSIZ - 1); the charset also keeps the name safe in paths. */
export function validateInterfaceName(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name) || name === '.' || name === '..') {
    throw new AgentVpnError(
      'BAD_INTERFACE_NAME',
      `invalid interface name "${name}"`,
      `use 1 to 15 characters from A-Z a-z 0-9 _ . - (default ${DEFAULT_INTERFACE})`,
    );
  }
  return name;
}
