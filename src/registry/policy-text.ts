import { AgentVpnError } from '../errors.js';

/**
 * The one place the registry checks a policy before it stores it. Until policy/parse.ts lands,
 * this checks that the text is JSON with // and /* *\/ comments holding an object with a
 * "grants" list; then parsePolicy takes its place and gives line:col errors.
 */

/**
 * A policy travels in every snapshot and to every agent, and sits in each agent's memory: a
 * few hundred grants fit in 48 KiB (and below the registry's 64 KiB request bodies).
 */
export const MAX_POLICY_CHARS = 48 * 1024;

function bad(message: string): AgentVpnError {
  return new AgentVpnError('BAD_POLICY', message, 'write the policy as JSON (// and /* */ comments allowed) with a "grants" list; see docs/policy.md');
}

/** JSON text with the comments blanked out (strings are kept as they are). */
function withoutComments(text: string): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      const start = i;
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++;
      out += text.slice(start, i + 1);
    } else if (c === '/' && text[i + 1] === '/') {
      while (i < text.length && text[i] !== '\n') i++;
      out += '\n';
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      if (end < 0) throw bad('the policy has a /* comment that is never closed');
      i = end + 1;
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

/** Refuses (BAD_POLICY) a policy text the agents could not use; returns nothing when it is fine. */
export function checkPolicyText(text: string): void {
  if (typeof text !== 'string' || text.length === 0) throw bad('the policy is empty');
  if (text.length > MAX_POLICY_CHARS) throw bad(`the policy is ${text.length} characters, over the ${MAX_POLICY_CHARS}-character limit`);
  let value: unknown;
  try {
    value = JSON.parse(withoutComments(text));
  } catch (e) {
    throw bad(`the policy is not valid JSON: ${(e as Error).message}`);
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw bad('the policy must be a JSON object');
  if (!Array.isArray((value as { grants?: unknown }).grants)) throw bad('the policy needs a "grants" list');
}
