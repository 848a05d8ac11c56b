import { AgentVpnError } from '../errors.js';

/**
 * Member tags (`registry token create --tag gpu`): an agent's tags come from the token it joined
 * with, so only an operator sets them, and policy grants select agents by them (`tag:gpu`).
 */

/** Same shape as names: lowercase letters, digits and -, up to 63. */
export const TAG_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Tags travel in every snapshot with every agent: a handful is what grants need. */
export const MAX_TAGS = 16;

/** The tags as given, checked, without duplicates, in the order given. */
export function validateTags(tags: readonly string[]): string[] {
  const out: string[] = [];
  for (const t of tags) {
    if (typeof t !== 'string' || !TAG_PATTERN.test(t)) {
      throw new AgentVpnError('BAD_TAG', `invalid tag "${String(t).slice(0, 80)}"`, 'tags are lowercase letters, digits and -, up to 63 (e.g. --tag gpu)');
    }
    if (!out.includes(t)) out.push(t);
  }
  if (out.length > MAX_TAGS) throw new AgentVpnError('BAD_TAG', `${out.length} tags given`, `a token carries at most ${MAX_TAGS} tags`);
  return out;
}

/** Tags read back from the database: anything malformed is dropped rather than served. */
export function parseStoredTags(json: string): string[] {
  try {
    const v: unknown = JSON.parse(json);
    return Array.isArray(v) ? v.filter((t): t is string => typeof t === 'string' && TAG_PATTERN.test(t)).slice(0, MAX_TAGS) : [];
  } catch {
    return [];
  }
}
