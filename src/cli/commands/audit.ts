import { readFileSync } from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { agentVerifyOptions } from '../../audit/agent-dir.js';
import { parseEntry, type AuditEntry } from '../../audit/entry.js';
import { auditDirOf } from '../../audit/files.js';
import { checkProofBundle, type ProofBundle } from '../../audit/proof.js';
import { readEntryLines, verifyLogDir, type VerifyReport } from '../../audit/verify.js';
import { callDaemon } from '../../daemon/control-client.js';
import { AgentVpnError } from '../../errors.js';
import { DEFAULT_STATE_DIR, stateDir } from '../../identity/identity.js';
import { parseDuration } from '../duration.js';
import { columns, interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface DirArgs extends GlobalArgs {
  interface: string;
  'state-dir'?: string;
}

const stateDirOption = { type: 'string', describe: `read the log in this state directory's audit/ directly (default: the running daemon's, else ${DEFAULT_STATE_DIR} or AGENTVPN_STATE_DIR)` } as const;
/** How often `tail -f` asks the daemon for new entries. */
const FOLLOW_EVERY_MS = 500;

function formatEntry(e: AuditEntry): string {
  const details = JSON.stringify(e.details);
  return `${e.time}  ${String(e.seq).padStart(6)}  ${e.type.padEnd(20)} ${e.subject || '-'}  ${details === '{}' ? '' : details}`;
}

/** The audit directory: of --state-dir, else the running daemon's, else the default state directory's. */
async function auditDir(args: DirArgs): Promise<string> {
  if (args['state-dir'] !== undefined) return auditDirOf(stateDir(args['state-dir']));
  try {
    return ((await callDaemon(args.interface, 'auditStatus')) as { dir: string }).dir;
  } catch (e) {
    if (!isNotRunning(e)) throw e;
    return auditDirOf(stateDir());
  }
}

/** Entries from the log file (no daemon needed; crash debris at the end is left out, as the daemon cuts it). */
function entriesOnDisk(dir: string): AuditEntry[] {
  return readEntryLines(dir).lines.map((l) => parseEntry(l));
}

function isNotRunning(e: unknown): boolean {
  return e instanceof AgentVpnError && e.code === 'DAEMON_NOT_RUNNING';
}

interface TailArgs extends DirArgs {
  follow: boolean;
  lines: number;
}

async function tail(args: TailArgs): Promise<void> {
  const print = (e: AuditEntry) => process.stdout.write(`${args.json ? JSON.stringify(e) : formatEntry(e)}\n`);
  let page: { size: number; entries: AuditEntry[] };
  try {
    page = (await callDaemon(args.interface, 'auditTail', { limit: args.lines })) as typeof page;
  } catch (e) {
    if (!isNotRunning(e) || args.follow) throw e;
    const all = entriesOnDisk(await auditDir(args));
    all.slice(-args.lines).forEach(print);
    return;
  }
  page.entries.forEach(print);
  let next = page.size;
  while (args.follow) {
    await new Promise((r) => setTimeout(r, FOLLOW_EVERY_MS));
    const more = (await callDaemon(args.interface, 'auditTail', { from: next, limit: 1000 })) as typeof page;
    more.entries.forEach(print);
    next += more.entries.length;
  }
}

interface ExportArgs extends DirArgs {
  since?: string;
}

/** --since: an ISO 8601 time, or a duration back from now (24h, 7d). */
function sinceMs(text: string | undefined): number {
  if (text === undefined) return -Infinity;
  if (/^\d+[smhd]$/.test(text)) return Date.now() - parseDuration(text, '--since');
  const t = Date.parse(text);
  if (Number.isNaN(t)) throw new AgentVpnError('USAGE', `--since "${text}" is neither a time nor a duration`, 'e.g. --since 2026-12-01T00:00:00Z or --since 24h');
  return t;
}

async function exportEntries(args: ExportArgs): Promise<void> {
  const since = sinceMs(args.since);
  for (const e of entriesOnDisk(await auditDir(args))) if (Date.parse(e.time) >= since) process.stdout.write(`${JSON.stringify(e)}\n`);
}

/** The registry's view, through the daemon, when it runs and the registry answers; else null (offline verify). */
async function registryView(args: DirArgs): Promise<{ cosigned: string[]; size?: number; lines?: (from: number, to: number) => Promise<Buffer[]>; note: string }> {
  if (args['state-dir'] !== undefined) return { cosigned: [], note: 'offline: the directory only (no daemon asked)' };
  try {
    const { head } = (await callDaemon(args.interface, 'auditRegistryHead')) as { head: { size: number; cosigned: string | null } };
    const lines = async (from: number, to: number) => {
      const { entries } = (await callDaemon(args.interface, 'auditRegistryEntries', { from, limit: to - from })) as { entries: string[] };
      return entries.map((l) => Buffer.from(l, 'utf8'));
    };
    return { cosigned: head.cosigned ? [head.cosigned] : [], size: head.size, lines, note: `the registry holds ${head.size} entries` };
  } catch (e) {
    return { cosigned: [], note: `the registry was not asked: ${(e as Error).message}` };
  }
}

function formatReport(r: VerifyReport, registry: string): string {
  const head = [
    ['entries:', String(r.entries)],
    ['checkpoints:', `${r.checkpoints} (the newest good one covers ${r.checkpointedSize})`],
    ['witnessed:', r.witnessedSize === null ? 'no cosigned checkpoint checked' : `the registry cosigned ${r.witnessedSize} entries of this history`],
    ['registry:', registry],
    ...(r.tornBytes ? [['torn tail:', `${r.tornBytes} bytes after the last entry (a crash mid-write; cut at the next start)`]] : []),
  ];
  const verdict = r.ok ? 'audit log verifies' : `AUDIT LOG DOES NOT VERIFY: ${r.problems[0]!.message}`;
  const more = r.problems.slice(1).map((p) => `  also: ${p.message}`);
  return [columns(head, '  '), verdict, ...more].join('\n');
}

async function verify(args: DirArgs): Promise<void> {
  const dir = await auditDir(args);
  const opts = agentVerifyOptions(dir);
  const registry = await registryView(args);
  const report = await verifyLogDir(dir, { ...opts, cosigned: registry.cosigned, registrySize: registry.size, registryLines: registry.lines });
  printResult(args.json, { ...report, registry: registry.note }, () => formatReport(report, registry.note));
  if (!report.ok) process.exitCode = 1;
}

interface ProveArgs extends DirArgs {
  seq: number;
}

interface CheckArgs extends GlobalArgs {
  file: string;
  'witness-key'?: string;
}

/** NAME+BASE64 (the form `agentvpn registry audit witness` prints). */
function parseWitnessKey(text: string | undefined) {
  if (text === undefined) return undefined;
  const at = text.indexOf('+'); // key names hold no "+"; base64 may
  const publicKey = Buffer.from(text.slice(at + 1), 'base64');
  if (at <= 0 || publicKey.length !== 32) throw new AgentVpnError('USAGE', '--witness-key must be NAME+BASE64 (32-byte Ed25519 key)', 'copy it from `agentvpn registry audit witness` on the registry host');
  return { name: text.slice(0, at), publicKey };
}

function checkProof(args: CheckArgs): void {
  let bundle: ProofBundle;
  try {
    bundle = JSON.parse(readFileSync(args.file, 'utf8')) as ProofBundle;
  } catch (e) {
    throw new AgentVpnError('USAGE', `cannot read a proof from ${args.file}: ${(e as Error).message}`, 'give the file `agentvpn audit prove SEQ > FILE` wrote');
  }
  const r = checkProofBundle(bundle, parseWitnessKey(args['witness-key']));
  printResult(args.json, { ...r }, () => [
    `entry ${r.entry.seq} (${r.entry.type}, ${r.entry.time}) is in the log of ${r.entry.agent} of size ${r.size}`,
    r.witnessedBy === null ? 'not witnessed: the checkpoint is signed by the agent only'
      : `witnessed by ${r.witnessedBy} at ${new Date(r.cosignedAt! * 1000).toISOString()}${r.witnessFromBundle ? ' (witness key taken from the proof: pass --witness-key to check it against yours)' : ''}`,
  ].join('\n'));
}

const withDir = <T>(y: Argv<GlobalArgs>) => y.option('interface', interfaceOption).option('state-dir', stateDirOption) as unknown as Argv<T>;

export const auditCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'audit <command>',
  describe: "Read, export, verify and prove this agent's tamper-evident audit log",
  builder: (y) =>
    y.command<TailArgs>({
      command: 'tail',
      describe: 'Show the newest entries (-f: and follow)',
      builder: (a) => withDir<TailArgs>(a).option('follow', { alias: 'f', type: 'boolean', default: false }).option('lines', { alias: 'n', type: 'number', default: 20 }) as Argv<TailArgs>,
      handler: runCommand(tail),
    }).command<ExportArgs>({
      command: 'export',
      describe: 'Every entry as JSON lines (for a SIEM), read from the state directory',
      builder: (a) => withDir<ExportArgs>(a).option('since', { type: 'string', describe: 'only entries from this time (ISO 8601) or this long ago (24h, 7d)' }) as Argv<ExportArgs>,
      handler: runCommand(exportEntries),
    }).command<DirArgs>({
      command: 'verify',
      describe: "Check the log against its checkpoints and the registry's cosigned checkpoint; exits 1 on the first bad entry",
      builder: (a) => withDir<DirArgs>(a),
      handler: runCommand(verify),
    }).command<ProveArgs>({
      command: 'prove <seq>',
      describe: 'An inclusion proof of entry SEQ against a cosigned checkpoint, for a third party to check offline',
      builder: (a) => withDir<ProveArgs>(a).positional('seq', { type: 'number', demandOption: true }) as Argv<ProveArgs>,
      handler: runCommand(async (args) => {
        process.stdout.write(`${JSON.stringify(await callDaemon(args.interface, 'auditProve', { seq: args.seq }))}\n`);
      }),
    }).command<CheckArgs>({
      command: 'check-proof <file>',
      describe: 'Check a proof from `audit prove` offline',
      builder: (a) => (a as Argv<GlobalArgs>).positional('file', { type: 'string', demandOption: true })
        .option('witness-key', { type: 'string', describe: "the registry's witness key as NAME+BASE64 (else the proof's own is used, and said so)" }) as unknown as Argv<CheckArgs>,
      handler: runCommand(checkProof),
    }).command<DirArgs & { text: string }>({
      command: 'note <text>',
      describe: "Add an operator's note (answered once it is on disk)",
      builder: (a) => withDir<DirArgs & { text: string }>(a).positional('text', { type: 'string', demandOption: true }) as Argv<DirArgs & { text: string }>,
      handler: runCommand(async (args) => {
        const { entry } = (await callDaemon(args.interface, 'auditNote', { text: args.text })) as { entry: AuditEntry };
        printResult(args.json, { entry }, () => formatEntry(entry));
      }),
    }).command<DirArgs>({
      command: 'status',
      describe: 'The log: size, checkpoints, shipping to the registry',
      builder: (a) => withDir<DirArgs>(a),
      handler: runCommand(async (args) => {
        const s = (await callDaemon(args.interface, 'auditStatus')) as Record<string, unknown> & { ship: Record<string, unknown> | null };
        printResult(args.json, s, () => columns(Object.entries({ ...s, checkpoint: undefined, ship: undefined, ...(s.ship ? { shipping: s.ship.state, shipped: s.ship.shipped, witness: s.ship.witness, problem: s.ship.problem } : {}) })
          .filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => [`${k}:`, String(v)]), '  '));
      }),
    }).demandCommand(1, 'no audit command given (tail, export, verify, prove, check-proof, note, status)'),
  handler: () => {},
};
