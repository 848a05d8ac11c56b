import { AgentVpnError } from '../errors.js';
import { verifyKeyChain } from '../identity/rotation.js';
import { openCheckpoint, type NoteVerifier } from './checkpoint.js';
import { openCosigned } from './cosignature.js';
import { parseEntry, type AuditEntry } from './entry.js';
import { leafHash, verifyInclusion } from './merkle.js';
import { agentLogOrigin } from './origin.js';

/**
 * An inclusion proof a third party checks offline (`agentvpn audit check-proof FILE`): the entry,
 * a checkpoint cosigned by the registry's witness, the RFC 9162 audit path from the entry to that
 * checkpoint's root, and the agent's key chain (which proves the checkpoint's signing key from
 * the agent ID inside the entry, so no other lookup is needed).
 *
 * | field      | content                                                                 |
 * | ---------- | ----------------------------------------------------------------------- |
 * | v          | 1                                                                       |
 * | entry      | the entry's canonical JSON line                                         |
 * | checkpoint | the signed checkpoint note (agent signature, and the witness's if any)  |
 * | proof      | base64 hashes of the inclusion proof                                    |
 * | chain      | the agent's key statements                                              |
 * | witness    | {name, publicKey}: the witness the agent pinned, or null (not witnessed) |
 */
export interface ProofBundle {
  v: 1;
  entry: string;
  checkpoint: string;
  proof: string[];
  chain: unknown[];
  witness: { name: string; publicKey: string } | null;
}

export interface ProofCheck {
  entry: AuditEntry;
  size: number;
  /** The witness whose cosignature was checked, or null when the checkpoint has only the agent's signature. */
  witnessedBy: string | null;
  cosignedAt: number | null;
  /** True when the witness key came from the bundle itself (compare it with the registry's). */
  witnessFromBundle: boolean;
}

function bad(detail: string): AgentVpnError {
  return new AgentVpnError('AUDIT_PROOF_INVALID', `the proof does not hold: ${detail}`, 'the entry, checkpoint or proof was altered, or they belong to different logs: ask the agent for a fresh proof');
}

/**
 * Checks a bundle; throws AUDIT_PROOF_INVALID saying what failed. `witness` is the verifier's own
 * copy of the registry's witness key; without it the bundle's is used (and reported as such).
 */
export function checkProofBundle(bundle: ProofBundle, witness?: NoteVerifier): ProofCheck {
  if (bundle?.v !== 1 || typeof bundle.entry !== 'string' || typeof bundle.checkpoint !== 'string' || !Array.isArray(bundle.proof) || !Array.isArray(bundle.chain)) {
    throw bad('it is not a version 1 proof bundle');
  }
  const entry = parseEntry(bundle.entry);
  const chain = verifyKeyChain(entry.agent, bundle.chain);
  if (!chain.ok) throw bad(`the key chain does not prove keys of ${entry.agent}: ${chain.problem}`);
  const origin = agentLogOrigin(entry.agent);
  const keys = bundle.chain.map((s) => Buffer.from(String((s as { key?: unknown }).key), 'base64'));
  let cp;
  try {
    cp = openCheckpoint(bundle.checkpoint, keys.map((publicKey) => ({ name: origin, publicKey })));
  } catch (e) {
    throw bad(`the checkpoint is not signed by the agent: ${(e as Error).message}`);
  }
  if (cp.origin !== origin) throw bad(`the checkpoint is for ${cp.origin.slice(0, 100)}, not the entry's log`);
  const proof = bundle.proof.map((h) => Buffer.from(String(h), 'base64'));
  if (!verifyInclusion(leafHash(Buffer.from(bundle.entry, 'utf8')), entry.seq, cp.size, proof, cp.rootHash)) {
    throw bad(`entry ${entry.seq} is not in the tree of size ${cp.size} with that root`);
  }
  const witnessKey = witness ?? (bundle.witness ? { name: bundle.witness.name, publicKey: Buffer.from(bundle.witness.publicKey, 'base64') } : null);
  if (!witnessKey) return { entry, size: cp.size, witnessedBy: null, cosignedAt: null, witnessFromBundle: false };
  let cosigned;
  try {
    cosigned = openCosigned(bundle.checkpoint, witnessKey);
  } catch (e) {
    throw bad((e as Error).message);
  }
  return { entry, size: cp.size, witnessedBy: witnessKey.name, cosignedAt: cosigned.cosignedAt, witnessFromBundle: !witness };
}
