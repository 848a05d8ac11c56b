import { AgentVpnError } from '../errors.js';
import { parsePolicy } from '../policy/parse.js';

/**
 * The one place the registry checks a policy before it stores it: its size first (the cheap
 * check), then parsePolicy (policy/parse.ts), whose errors say line:col. Agents parse it again
 * on arrival; the registry only makes sure it never stores or pushes one they would refuse.
 */

/**
 * A policy travels in every snapshot and to every agent, and sits in each agent's memory: a
 * few hundred grants fit in 48 KiB (and below the registry's 64 KiB request bodies).
 */
export const MAX_POLICY_CHARS = 48 * 1024;

/** Refuses (POLICY_INVALID) a policy text the agents could not use; returns nothing when it is fine. */
export function checkPolicyText(text: string): void {
  if (typeof text !== 'string' || text.length === 0) {
    throw new AgentVpnError('POLICY_INVALID', 'the policy is empty', 'write the policy as JSON (// and /* */ comments allowed) with a "grants" list; see docs/policy.md');
  }
  if (text.length > MAX_POLICY_CHARS) {
    throw new AgentVpnError('POLICY_INVALID', `the policy is ${text.length} characters, over the registry's ${MAX_POLICY_CHARS}-character limit`,
      'merge grants with tags, capabilities and port ranges');
  }
  parsePolicy(text);
}
