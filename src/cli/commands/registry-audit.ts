import { existsSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { AgentVpnError } from '../../errors.js';
import { verifyRegistryAudit, type RegistryAuditReport } from '../../registry/audit-verify.js';
import { registryLogDirOf } from '../../registry/registry-log.js';
import { openStore, sqliteFileOf } from '../../registry/open-store.js';
import { isPostgresUrl } from '../../registry/pg-store.js';
import { WITNESS_HOST_KEY, type AuditRefusal, type RegistryStore } from '../../registry/store.js';
import { DEFAULT_WITNESS_HOST, readWitnessPublic, witnessKeyFileOf } from '../../registry/witness-key.js';
import { columns, printError, printResult, runCommand, type GlobalArgs } from '../output.js';

/**
 * `agentvpn registry audit verify|refusals --db FILE`: what the registry holds of agents' audit
 * logs and its own log, checked offline (the registry may be running on the database).
 */

interface AuditArgs extends GlobalArgs {
  db: string;
  'witness-key'?: string;
  'witness-host'?: string;
  'audit-dir'?: string;
}

/** Refusals listed at most: the newest ones past it are for --json and a query of the table. */
const MAX_LISTED = 10_000;

async function openDb<T>(db: string, work: (store: RegistryStore) => Promise<T>): Promise<T> {
  // Verifying must not create an empty database where the operator mistyped the path.
  if (!isPostgresUrl(db) && !existsSync(db)) throw new AgentVpnError('REGISTRY_DB', `no registry database at ${db}`, 'give --db the registry\'s database file');
  const store = await openStore(db);
  try {
    return await work(store);
  } finally {
    await store.close();
  }
}

/** The first problem, named by agent (or the registry's log) and entry. */
function firstProblem(r: RegistryAuditReport): string | null {
  for (const a of r.agents) {
    const p = a.problems[0];
    if (p) return `agent ${a.agent}${p.seq === null ? '' : ` seq ${p.seq}`}: ${p.message}`;
  }
  const p = r.registryLog?.problems[0];
  return p ? `the registry's own log${p.seq === null ? '' : ` seq ${p.seq}`}: ${p.message}` : null;
}

function human(r: RegistryAuditReport): string {
  const rows = [['STATE', 'ENTRIES', 'CHECKPOINTS', 'LOG']];
  for (const a of r.agents) rows.push([a.ok ? 'ok' : 'BAD', String(a.entries), String(a.checkpoints), a.agent]);
  if (r.registryLog) rows.push([r.registryLog.ok ? 'ok' : 'BAD', String(r.registryLog.entries), String(r.registryLog.checkpoints), `registry (${r.registryLog.dir})`]);
  const lines = [`witness ${r.witness.name} ${r.witness.publicKey}`, rows.length > 1 ? columns(rows) : 'no audit logs held'];
  for (const a of r.agents) for (const p of a.problems) lines.push(`  ${a.agent}${p.seq === null ? '' : ` seq ${p.seq}`}: ${p.message}`);
  for (const p of r.registryLog?.problems ?? []) lines.push(`  registry${p.seq === null ? '' : ` seq ${p.seq}`}: ${p.message}`);
  return lines.join('\n');
}

/** The witness's public key: from --witness-key (default DB.witness-key), named for the host the registry last ran with. */
async function witnessOf(args: AuditArgs, store: RegistryStore) {
  const host = args['witness-host'] ?? (await store.getMeta(WITNESS_HOST_KEY)) ?? DEFAULT_WITNESS_HOST;
  const file = sqliteFileOf(args.db);
  if (!args['witness-key'] && !file) throw new AgentVpnError('USAGE', 'a PostgreSQL registry keeps no witness key beside its database', 'pass --witness-key FILE (the one the registry instances run with)');
  return readWitnessPublic(args['witness-key'] ?? witnessKeyFileOf(file!), host);
}

async function verify(args: AuditArgs): Promise<void> {
  const report = await openDb(args.db, async (store) =>
    verifyRegistryAudit(store, { witness: await witnessOf(args, store), auditDir: args['audit-dir'] ?? (sqliteFileOf(args.db) ? registryLogDirOf(args.db) : '(no --audit-dir given)') }));
  const problem = firstProblem(report);
  if (!problem) return printResult(args.json, { ...report }, () => human(report));
  const err = new AgentVpnError('AUDIT_VERIFY_FAILED', problem, 'the database or the log directory was edited: keep a copy as evidence; each agent\'s own log (agentvpn audit verify) holds its entries');
  if (args.json) {
    process.stdout.write(`${JSON.stringify({ ...report, ...err.toJSON() })}\n`);
  } else {
    process.stdout.write(`${human(report)}\n`);
    printError(err, false);
  }
  process.exitCode = 1;
}

/** The witness key as NAME+BASE64: what `agentvpn audit check-proof --witness-key` takes. */
async function witness(args: AuditArgs): Promise<void> {
  const w = await openDb(args.db, (store) => witnessOf(args, store));
  const publicKey = Buffer.from(w.publicKey).toString('base64');
  printResult(args.json, { name: w.name, publicKey, witnessKey: `${w.name}+${publicKey}` }, () => `${w.name}+${publicKey}`);
}

async function refusals(args: AuditArgs): Promise<void> {
  const list: AuditRefusal[] = await openDb(args.db, (store) => store.auditRefusals(0, MAX_LISTED));
  printResult(args.json, { refusals: list }, () => {
    if (list.length === 0) return 'no audit refusals';
    const rows = [['ID', 'TIME', 'NETWORK', 'HELD', 'SIZE', 'AGENT', 'REASON']];
    for (const r of list) rows.push([String(r.id), new Date(r.at).toISOString(), r.network, String(r.held), String(r.size ?? '-'), r.agent, r.reason]);
    return columns(rows);
  });
}

const options = (y: Argv<GlobalArgs>) =>
  y
    .option('db', {
      type: 'string', demandOption: true, default: process.env.AGENTVPN_REGISTRY_DB, defaultDescription: '$AGENTVPN_REGISTRY_DB',
      describe: 'registry database: SQLite file or postgres:// URL (then give --witness-key and --audit-dir)',
    })
    .option('witness-key', { type: 'string', describe: 'the witness key file (default: DB.witness-key); only its public key is used' })
    .option('witness-host', { type: 'string', describe: 'the host part of the witness key name (default: the one the registry last ran with)' })
    .option('audit-dir', { type: 'string', describe: "the registry's own audit log directory (default: DB.audit)" }) as unknown as Argv<AuditArgs>;

export const registryAuditCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'audit',
  describe: "Check the agents' audit logs the registry holds, and its own",
  builder: (y) =>
    y
      .command<AuditArgs>({
        command: 'verify', describe: 'Verify every agent log in the database and the registry\'s own log; names the first bad entry, exits non-zero',
        builder: options, handler: runCommand(verify),
      })
      .command<AuditArgs>({ command: 'witness', describe: "Print the witness key as NAME+KEY, for a third party's `agentvpn audit check-proof --witness-key`", builder: options, handler: runCommand(witness) })
      .command<AuditArgs>({ command: 'refusals', describe: 'List the ships refused as inconsistent (forks), kept as evidence', builder: options, handler: runCommand(refusals) })
      .demandCommand(1, 'say what to do: verify, witness or refusals'),
  handler: () => {},
};
