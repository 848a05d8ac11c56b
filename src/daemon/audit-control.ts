import { clip, parseEntry } from '../audit/entry.js';
import type { ProofBundle } from '../audit/proof.js';
import { openCosigned } from '../audit/cosignature.js';
import type { AuditShipper, WitnessApi } from '../audit/shipper.js';
import { AgentVpnError } from '../errors.js';
import type { Identity } from '../identity/identity.js';
import type { AuditTrail } from './audit-trail.js';
import type { ControlHandler } from './control-server.js';

/** Entries one auditTail call returns at most (the CLI pages with `from`). */
const MAX_TAIL = 1000;
/** An operator's note is a sentence or two, not a document. */
const MAX_NOTE_CHARS = 1000;
/** The registry answers at most 512 entries per read. */
const MAX_REGISTRY_PAGE = 500;

function intParam(params: unknown, key: string): number | undefined {
  const v = (params as Record<string, unknown> | undefined)?.[key];
  if (v === undefined || v === null) return undefined;
  if (!Number.isSafeInteger(v) || (v as number) < 0) throw new AgentVpnError('BAD_PARAMS', `${key} must be a non-negative integer`, `e.g. ${key}: 0`);
  return v as number;
}

/**
 * The control methods of the audit trail (`agentvpn audit …` talks to these): status, tail, an
 * operator's note (answered once it is on disk), an inclusion proof bundle, and the registry's
 * copy for `audit verify`.
 */
export function auditHandlers(trail: AuditTrail, shipper: AuditShipper | null, api: WitnessApi & { entries?(from: number, limit: number): Promise<string[]> } | null, identity: () => Identity): Record<string, ControlHandler> {
  const log = trail.log;
  return {
    auditStatus: () => ({ ...trail.status(), checkpoint: log.latestCheckpoint, ship: shipper?.status() ?? null }),
    auditTail: (params) => {
      const limit = Math.min(intParam(params, 'limit') ?? 100, MAX_TAIL);
      const from = intParam(params, 'from') ?? Math.max(0, log.size - limit);
      const to = Math.min(log.size, from + limit);
      return { size: log.size, entries: from >= to ? [] : log.read(from, to).map((l) => parseEntry(l)) };
    },
    auditNote: async (params) => {
      const text = (params as { text?: unknown } | undefined)?.text;
      if (typeof text !== 'string' || text.trim() === '') throw new AgentVpnError('BAD_PARAMS', 'the note needs text', 'e.g. agentvpn audit note "maintenance window starts"');
      return { entry: await trail.append('operator.note', 'operator', { text: clip(text, MAX_NOTE_CHARS) }) };
    },
    auditProve: async (params) => {
      const seq = intParam(params, 'seq');
      if (seq === undefined || seq >= log.size) throw new AgentVpnError('AUDIT_RANGE', `entry ${seq ?? '?'} is not in the log (it holds ${log.size})`, `give a seq below ${log.size} (agentvpn audit tail shows them)`);
      await shipper?.shipNow();
      return proveWith(trail, shipper, seq, identity());
    },
    auditRegistryHead: async () => {
      if (!api) throw new AgentVpnError('NO_REGISTRY', 'this agent has no registry', 'static mode keeps the audit log locally only');
      return { head: await api.head() };
    },
    auditRegistryEntries: async (params) => {
      if (!api?.entries) throw new AgentVpnError('NO_REGISTRY', 'this agent has no registry', 'static mode keeps the audit log locally only');
      const from = intParam(params, 'from') ?? 0;
      return { entries: await api.entries(from, Math.min(intParam(params, 'limit') ?? MAX_REGISTRY_PAGE, MAX_REGISTRY_PAGE)) };
    },
  };
}

/** The bundle for `seq`: against the registry's cosigned checkpoint when it covers seq, else a fresh local one. */
async function proveWith(trail: AuditTrail, shipper: AuditShipper | null, seq: number, identity: Identity): Promise<ProofBundle & { witnessed: boolean }> {
  const log = trail.log;
  const witness = shipper?.witnessKey ?? null;
  const cosigned = shipper?.lastCosigned() ?? null;
  const cosignedSize = cosigned && witness ? openCosigned(cosigned, witness).size : 0;
  let checkpoint: string;
  let size: number;
  if (cosigned && cosignedSize > seq) {
    checkpoint = cosigned;
    size = cosignedSize;
  } else {
    await log.checkpoint();
    size = log.size;
    checkpoint = log.signCheckpointAt(size);
  }
  return {
    v: 1, entry: log.read(seq, seq + 1)[0]!.toString('utf8'), checkpoint,
    proof: log.tree.inclusionProof(seq, size).map((h) => h.toString('base64')),
    chain: [...identity.chain], witness: witness ? { name: witness.name, publicKey: Buffer.from(witness.publicKey).toString('base64') } : null,
    witnessed: checkpoint === cosigned,
  };
}
