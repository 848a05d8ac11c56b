/** An agent's log origin, also its checkpoint key name (c2sp.org/tlog-checkpoint: unique, schema-less). */
export function agentLogOrigin(agentId: string): string {
  return `agentvpn.audit/${agentId}`;
}
