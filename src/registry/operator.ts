import { AgentVpnError } from '../errors.js';
import { checkPolicyText } from './policy-text.js';
import { NETWORK_PATTERN } from '../net/names.js';
import type { BlockedAgent, RegistryStore, StoredPolicy } from './store.js';

/**
 * What an operator does to a registry: the CLI runs these on the database directly (a running
 * registry picks them up within a second, operator-sync.ts) and the admin API runs them in the
 * registry process. Both give the same answers.
 */

export interface OperatorAgent {
  id: string;
  name: string;
  ipv4: string;
  tags: string[];
  joinedAt: number;
  /** Whether it published a record, and its liveness as last saved (the server saves it every second). */
  published: boolean;
  online: boolean;
  lastSeen: number | null;
  /** Its current key when it rotated (base64), else absent. */
  key?: string;
}

export interface AgentListing {
  network: string;
  agents: OperatorAgent[];
  blocked: BlockedAgent[];
}

function checkNetwork(network: string): void {
  if (!NETWORK_PATTERN.test(network)) {
    throw new AgentVpnError('BAD_NETWORK', `invalid network name "${network.slice(0, 80)}"`, 'network names are lowercase letters, digits and -, up to 63');
  }
}

export async function listAgents(store: RegistryStore, network: string): Promise<AgentListing> {
  checkNetwork(network);
  const records = new Map((await store.records()).filter((r) => r.network === network).map((r) => [r.id, r]));
  const keys = new Map((await store.keyChains()).map((c) => [c.id, c.key]));
  const agents = (await store.members()).filter((m) => m.network === network).map((m): OperatorAgent => {
    const r = records.get(m.id);
    const key = keys.get(m.id);
    return {
      id: m.id, name: m.name, ipv4: m.ipv4, tags: m.tags, joinedAt: m.joinedAt,
      published: r !== undefined, online: r?.online ?? false, lastSeen: r?.lastSeen ?? null, ...(key ? { key } : {}),
    };
  });
  agents.sort((a, b) => a.name.localeCompare(b.name));
  return { network, agents, blocked: (await store.blocked()).filter((b) => b.network === network) };
}

/** Removes (or blocks) an agent by name or ID; AGENT_NOT_FOUND when there is none. */
export async function removeAgent(store: RegistryStore, network: string, target: string, block: boolean): Promise<{ id: string; name: string; wasMember: boolean }> {
  checkNetwork(network);
  const r = await store.removeMember(network, target, block, Date.now());
  if (!r.ok) {
    throw new AgentVpnError('AGENT_NOT_FOUND', r.message,
      block ? 'give the name or ID of a member (`agentvpn registry agent list`), or an agent ID to block before it joins' : 'give the name or ID of a member: `agentvpn registry agent list`');
  }
  return { id: r.id, name: r.name, wasMember: r.wasMember };
}

/** Checks a policy text and stores it as the network's next version. */
export async function setPolicy(store: RegistryStore, network: string, text: string): Promise<StoredPolicy> {
  checkNetwork(network);
  checkPolicyText(text);
  return store.setPolicy(network, text, Date.now());
}

export async function getPolicy(store: RegistryStore, network: string): Promise<StoredPolicy | null> {
  checkNetwork(network);
  return (await store.policies()).find((p) => p.network === network) ?? null;
}
