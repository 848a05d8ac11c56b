import { existsSync } from 'node:fs';
import { openCheckpoint, type NoteVerifier } from '../audit/checkpoint.js';
import { extendRange } from '../audit/compact-range.js';
import { openCosigned } from '../audit/cosignature.js';
import { parseEntry } from '../audit/entry.js';
import { MerkleTree, leafHash } from '../audit/merkle.js';
import { verifyLogDir, type VerifyReport } from '../audit/verify.js';
import { verifyKeyChain, type KeyStatement } from '../identity/rotation.js';
import { agentLogVerifiers } from './audit-ship.js';
import { LOGGED_ACTIONS_KEY, type AuditHead, type RegistryStore } from './store.js';

/**
 * `agentvpn registry audit verify`: every agent log the database holds, recomputed from its entry
 * rows (each line against its stored leaf hash, its seq, its owner), the stored compact range,
 * and every stored checkpoint (the agent's signature by a key of its chain, the witness's
 * cosignature, and the root recomputed from the entries); then the registry's own log directory
 * (src/audit/verify.ts). Problems name the agent and the first bad entry.
 *
 * An edit that also rewrites the row's leaf hash is still found: the entries no longer give the
 * roots the witness cosigned, and the entry is named within the span between two checkpoints.
 */

export interface AgentLogProblem {
  kind: 'entry' | 'changed' | 'missing' | 'checkpoint' | 'frontier' | 'chain';
  /** The entry it concerns (the first of a span), when one can be named. */
  seq: number | null;
  message: string;
}

export interface AgentLogReport {
  agent: string;
  entries: number;
  checkpoints: number;
  ok: boolean;
  /** The first is the first bad entry (problems naming none come last). */
  problems: AgentLogProblem[];
}

export interface RegistryAuditReport {
  ok: boolean;
  witness: { name: string; publicKey: string };
  agents: AgentLogReport[];
  /** The registry's own log; null when its directory does not exist. */
  registryLog: (VerifyReport & { dir: string }) | null;
}

/** Rows read per query: bounded memory per step whatever a log's size. */
const PAGE = 4096;
/** Per agent: after an edit, every later checkpoint is wrong too; the first few say it all. */
const MAX_PROBLEMS = 20;

/** The keys that may have signed an agent's checkpoints: its chain's (verified from its ID), else its ID's. */
function keysOf(agent: string, chain: unknown[] | undefined, add: (p: AgentLogProblem) => void): NoteVerifier[] {
  if (!chain) return agentLogVerifiers(agent, undefined);
  const check = verifyKeyChain(agent, chain);
  if (!check.ok) {
    add({ kind: 'chain', seq: null, message: `the stored key chain does not verify (${check.problem}): checkpoints are checked against the ID's key only` });
    return agentLogVerifiers(agent, undefined);
  }
  return agentLogVerifiers(agent, chain as KeyStatement[]);
}

export async function verifyAgentLog(store: RegistryStore, head: AuditHead, witness: NoteVerifier, chain: unknown[] | undefined): Promise<AgentLogReport> {
  const { agent } = head;
  const problems: AgentLogProblem[] = [];
  const add = (p: AgentLogProblem) => {
    if (problems.length < MAX_PROBLEMS) problems.push(p);
  };
  const verifiers = keysOf(agent, chain, add);
  const tree = new MerkleTree();
  let frontier: Buffer[] = [];
  for (let from = 0; ; from += PAGE) {
    const rows = await store.auditEntries(agent, from, PAGE);
    for (const row of rows) {
      const seq = tree.size;
      if (row.seq !== seq) {
        add({ kind: 'missing', seq, message: `entry ${seq} is missing (the next stored entry is ${row.seq}): entries were deleted` });
        return finish();
      }
      const leaf = leafHash(Buffer.from(row.line, 'utf8'));
      if (!leaf.equals(row.leafHash)) add({ kind: 'changed', seq, message: `entry ${seq} does not hash to its stored leaf hash: it was edited after the registry stored it` });
      try {
        const entry = parseEntry(row.line);
        if (entry.agent !== agent) add({ kind: 'entry', seq, message: `entry ${seq} belongs to ${entry.agent.slice(0, 80)}` });
        if (entry.seq !== seq) add({ kind: 'entry', seq, message: `the entry stored at seq ${seq} says seq ${entry.seq}` });
      } catch (e) {
        add({ kind: 'entry', seq, message: `entry ${seq}: ${(e as Error).message}` });
      }
      tree.appendLeafHash(leaf);
      frontier = extendRange(frontier, seq, [leaf]);
    }
    if (rows.length < PAGE) break;
  }
  return finish();

  async function finish(): Promise<AgentLogReport> {
    if (tree.size !== head.size) {
      add({ kind: 'missing', seq: Math.min(tree.size, head.size), message: `the log holds ${tree.size} entries but its head says ${head.size}: entries were ${tree.size < head.size ? 'deleted' : 'inserted'}` });
    } else if (head.frontier.length !== frontier.length || head.frontier.some((h, i) => !h.equals(frontier[i]!))) {
      add({ kind: 'frontier', seq: null, message: 'the stored compact range does not match the entries: the log head was edited' });
    }
    const checkpoints = await checkCheckpoints();
    problems.sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity));
    return { agent, entries: tree.size, checkpoints, ok: problems.length === 0, problems };
  }

  /** Every stored checkpoint: signed by the agent, cosigned by the witness, the root of the entries. */
  async function checkCheckpoints(): Promise<number> {
    let count = 0;
    let goodSize = 0;
    let last: string | null = null;
    for (let after = -1; ;) {
      const page = await store.auditCheckpoints(agent, after, PAGE);
      for (const c of page) {
        count++;
        after = c.size;
        last = c.note;
        let cp;
        try {
          openCheckpoint(c.note, verifiers);
          cp = openCosigned(c.note, witness);
        } catch (e) {
          add({ kind: 'checkpoint', seq: null, message: `the checkpoint of size ${c.size}: ${(e as Error).message}` });
          continue;
        }
        if (cp.size !== c.size) add({ kind: 'checkpoint', seq: null, message: `the checkpoint stored as size ${c.size} is of size ${cp.size}` });
        else if (cp.size > tree.size) add({ kind: 'missing', seq: tree.size, message: `the witness cosigned ${cp.size} entries but ${tree.size} are stored: entries ${tree.size}..${cp.size - 1} were deleted` });
        else if (!tree.root(cp.size).equals(cp.rootHash)) {
          // Unless an entry of the span was already named (its row's hash gave it away): that one explains it.
          const named = problems.some((p) => p.seq !== null && p.seq >= goodSize && p.seq < cp.size);
          if (!named) add({ kind: 'changed', seq: goodSize, message: `entries ${goodSize}..${cp.size - 1} do not give the root the witness cosigned at size ${cp.size}: one of them was edited` });
        } else goodSize = cp.size;
      }
      if (page.length < PAGE) break;
    }
    if (last !== head.cosigned) add({ kind: 'checkpoint', seq: null, message: 'the log head\'s cosigned checkpoint is not the newest stored checkpoint' });
    return count;
  }
}

/** Verifies every agent log in the store and the registry's own log directory. */
export async function verifyRegistryAudit(store: RegistryStore, opts: {
  witness: { name: string; registryLogName: string; publicKey: Buffer };
  auditDir: string;
}): Promise<RegistryAuditReport> {
  const logged = Number((await store.getMeta(LOGGED_ACTIONS_KEY)) ?? 0);
  const witness: NoteVerifier = { name: opts.witness.name, publicKey: opts.witness.publicKey };
  const chains = new Map((await store.keyChains()).map((c) => [c.id, c.chain]));
  const agents: AgentLogReport[] = [];
  for (const head of await store.auditHeads()) agents.push(await verifyAgentLog(store, head, witness, chains.get(head.agent)));
  let registryLog: RegistryAuditReport['registryLog'] = null;
  if (existsSync(opts.auditDir)) {
    const name = opts.witness.registryLogName;
    registryLog = { dir: opts.auditDir, ...(await verifyLogDir(opts.auditDir, { owner: name, origin: name, keys: [opts.witness.publicKey] })) };
  } else if (logged > 0) {
    registryLog = {
      dir: opts.auditDir, ok: false, entries: 0, checkpoints: 0, checkpointedSize: 0, witnessedSize: null, tornBytes: 0,
      problems: [{ kind: 'truncated', seq: 0, message: `the registry's log directory ${opts.auditDir} is missing, but the database says it logged operator actions up to ${logged}` }],
    };
  }
  return {
    ok: agents.every((a) => a.ok) && (registryLog?.ok ?? true),
    witness: { name: opts.witness.name, publicKey: opts.witness.publicKey.toString('base64') },
    agents,
    registryLog,
  };
}
