import { readFileSync } from 'node:fs';
import { AgentVpnError } from '../errors.js';

/**
 * The registry admin token for a command that talks to the admin API: from --admin-token-file, else
 * AGENTVPN_ADMIN_TOKEN. Never a flag value: other users would see it in ps.
 */
export function readAdminToken(file: string | undefined): string {
  let token = process.env.AGENTVPN_ADMIN_TOKEN;
  if (file) {
    try {
      token = readFileSync(file, 'utf8').trim();
    } catch (e) {
      throw new AgentVpnError('ADMIN_TOKEN_FILE', `cannot read admin token file ${file}: ${(e as Error).message}`, 'check the path and its permissions');
    }
  }
  if (!token) {
    throw new AgentVpnError('USAGE', '--registry needs an admin token', 'set AGENTVPN_ADMIN_TOKEN or pass --admin-token-file FILE (agentvpn registry admin-token create makes one)');
  }
  return token;
}
