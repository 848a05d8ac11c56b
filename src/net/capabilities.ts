import { AgentVpnError } from '../errors.js';

/**
 * Structured capabilities: `name[@version][;key=value...]`, e.g. `llm.inference@1;model=llama3`.
 * Matching is exact on each part the query names: a query `llm.inference;model=llama3` matches
 * any version of llm.inference whose model attribute is exactly llama3 — never a substring.
 */
export interface Capability {
  name: string;
  version?: string;
  attrs: Record<string, string>;
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const VERSION = /^[A-Za-z0-9][A-Za-z0-9.+-]{0,31}$/;
const KEY = /^[a-z0-9][a-z0-9._-]{0,31}$/;
const VALUE = /^[^\s;=@]{1,128}$/;
export const MAX_CAPABILITIES = 32;

function bad(text: string, what: string): AgentVpnError {
  return new AgentVpnError('BAD_CAPABILITY', `invalid capability "${text}": ${what}`,
    'write capabilities as name[@version][;key=value...], e.g. llm.inference@1;model=llama3 (lowercase name)');
}

export function parseCapability(text: string): Capability {
  // Never String(text): on a deeply nested array that recursion overflows the stack.
  if (typeof text !== 'string') throw bad(`(${typeof text})`, 'not text');
  if (text.length > 512) throw bad(text.slice(0, 40), 'too long');
  const [head, ...pairs] = text.trim().split(';');
  const [name, version, extra] = head.split('@');
  if (extra !== undefined) throw bad(text, 'more than one @');
  if (!NAME.test(name)) throw bad(text, `name "${name}" must be lowercase letters, digits, . _ -`);
  if (version !== undefined && !VERSION.test(version)) throw bad(text, `version "${version}" is not valid`);
  const attrs: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? '' : pair.slice(eq + 1);
    if (!KEY.test(key) || !VALUE.test(value)) throw bad(text, `attribute "${pair}" must be key=value`);
    if (key in attrs) throw bad(text, `attribute "${key}" repeated`);
    attrs[key] = value;
  }
  return version === undefined ? { name, attrs } : { name, version, attrs };
}

/** Canonical text: attributes sorted, so equal capabilities have equal strings (and signatures). */
export function formatCapability(c: Capability): string {
  const attrs = Object.keys(c.attrs).sort().map((k) => `;${k}=${c.attrs[k]}`).join('');
  return `${c.name}${c.version !== undefined ? `@${c.version}` : ''}${attrs}`;
}

export function capabilityMatches(query: Capability, cap: Capability): boolean {
  if (query.name !== cap.name) return false;
  if (query.version !== undefined && query.version !== cap.version) return false;
  return Object.entries(query.attrs).every(([k, v]) => cap.attrs[k] === v);
}

/** Whether any of an agent's capability strings matches the query. */
export function anyCapabilityMatches(query: Capability, caps: readonly string[]): boolean {
  return caps.some((c) => {
    try {
      return capabilityMatches(query, parseCapability(c));
    } catch {
      return false;
    }
  });
}
