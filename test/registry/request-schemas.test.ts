import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { AGENT_ID_PATTERN, agentIdOf, publicKeyOfAgentId } from '../../src/identity/agent-id.js';

describe('request schemas', () => {
  it('the agent-ID pattern accepts exactly what publicKeyOfAgentId decodes', () => {
    const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
    let agreed = 0;
    for (let i = 0; i < 2_000; i++) {
      const id = agentIdOf(randomBytes(32));
      // The ID itself, then one character changed (the last one carries the padding bits).
      const at = i % id.length;
      const other = id.slice(0, at) + alphabet[(alphabet.indexOf(id[at]) + 1 + (i % 31)) % 32] + id.slice(at + 1);
      for (const candidate of [id, other, id.slice(0, -1), `${id}a`]) {
        expect(AGENT_ID_PATTERN.test(candidate), candidate).toBe(publicKeyOfAgentId(candidate) !== null);
        agreed++;
      }
    }
    console.log(`agent-ID pattern and decoder agree on ${agreed} IDs and near misses`);
  });
});
