import { existsSync, readFileSync } from 'node:fs';
import { AgentVpnError } from '../errors.js';
import { verifyKeyChain } from '../identity/rotation.js';
import type { NoteVerifier } from './checkpoint.js';
import { auditPath } from './files.js';
import { agentLogOrigin } from './origin.js';
import type { VerifyOptions } from './verify.js';

/**
 * What verifying an agent's audit directory needs, read from the directory alone: the owner and
 * its keys from chain.json (checked against the agent ID, which the chain proves), and the witness
 * pinned in witness.json. So an auditor needs a copy of `audit/` and nothing else.
 */
export function agentVerifyOptions(dir: string): VerifyOptions {
  const chainFile = auditPath(dir, 'chain');
  if (!existsSync(auditPath(dir, 'entries'))) {
    throw new AgentVpnError('AUDIT_NO_LOG', `no audit log in ${dir}`, 'give the state directory of an agent that ran (--state-dir), or its audit/ directory');
  }
  if (!existsSync(chainFile)) throw new AgentVpnError('AUDIT_NO_CHAIN', `${chainFile} is missing: the log's keys are unknown`, 'the daemon writes it at start; copy it with the audit directory');
  let parsed: { id?: unknown; chain?: unknown };
  try {
    parsed = JSON.parse(readFileSync(chainFile, 'utf8')) as typeof parsed;
  } catch {
    throw new AgentVpnError('AUDIT_NO_CHAIN', `${chainFile} is not JSON`, 'restore it from a copy of the state directory');
  }
  const id = String(parsed.id);
  const chain = Array.isArray(parsed.chain) ? parsed.chain : [];
  const check = verifyKeyChain(id, chain);
  if (!check.ok) throw new AgentVpnError('AUDIT_BAD_CHAIN', `${chainFile} does not prove keys of ${id.slice(0, 80)}: ${check.problem}`, 'restore it from a copy of the state directory');
  const keys = chain.map((s) => Buffer.from(String((s as { key: string }).key), 'base64'));
  return { owner: id, origin: agentLogOrigin(id), keys, witness: pinnedWitness(dir) };
}

export function pinnedWitness(dir: string): NoteVerifier | null {
  const file = auditPath(dir, 'witness');
  if (!existsSync(file)) return null;
  try {
    const w = JSON.parse(readFileSync(file, 'utf8')) as { name: string; publicKey: string };
    return { name: w.name, publicKey: Buffer.from(w.publicKey, 'base64') };
  } catch {
    throw new AgentVpnError('AUDIT_BAD_WITNESS', `${file} is not a witness key`, 'restore it from a copy, or delete it to pin the registry\'s witness again');
  }
}
