import type { Argv, CommandModule } from 'yargs';
import { callDaemon } from '../../daemon/control-client.js';
import { AgentVpnError } from '../../errors.js';
import { DEFAULT_STATE_DIR, stateDir } from '../../identity/identity.js';
import { fingerprint, TrustStore, type TrustListEntry, type TrustMode } from '../../trust/store.js';
import { columns, interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

/** What the daemon's trustList answers (and what `trust list` reads from the state dir with no daemon). */
export interface TrustList {
  mode: TrustMode | null;
  entries: TrustListEntry[];
}

interface ListArgs extends GlobalArgs {
  interface: string;
  'state-dir'?: string;
  network: string;
}

interface ActionArgs extends GlobalArgs {
  interface: string;
  target: string;
}

/** "2026-12-01 09:20" (UTC): when an entry was made or, for a changed one, when the other key was offered. */
function since(ms: number): string {
  return new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
}

/** The fingerprint's first 16 characters after "SHA256:" are plenty to compare by eye; --json has the whole. */
function shortFingerprint(fp: string): string {
  return fp.slice(0, 7 + 16);
}

export function formatTrustList(list: TrustList): string {
  const head = `trust mode: ${list.mode ?? '(daemon not running: read from the state directory)'}`;
  if (list.entries.length === 0) return `${head}\nno agents in the trust store yet`;
  const rows = [['NAME', 'STATE', 'ID', 'KEY', 'OFFERED', 'SINCE']];
  for (const e of list.entries) {
    rows.push([e.name ?? '-', e.state, e.id, shortFingerprint(e.fingerprint), e.offered ? shortFingerprint(e.offered.fingerprint) : '-', since(e.offered?.at ?? e.firstSeen)]);
  }
  const alerts = list.entries.filter((e) => e.offered && e.state === 'changed').map((e) => {
    const o = e.offered!;
    const who = o.id === e.id ? 'another key of the same ID' : `agent ${o.id} as ${o.name} (${o.ipv4})`;
    return `alert: ${e.name ?? e.id} was offered ${who}, key ${o.fingerprint}: refused; check it, then \`agentvpn trust accept ${o.id === e.id ? e.name : o.name}\``;
  });
  const waiting = list.entries.filter((e) => e.state === 'pending').map((e) => `pending: ${e.name} waits for \`agentvpn trust approve ${e.name}\``);
  return [head, columns(rows), ...alerts, ...waiting].join('\n');
}

async function trustList(args: ListArgs): Promise<TrustList> {
  try {
    return (await callDaemon(args.interface, 'trustList')) as TrustList;
  } catch (e) {
    if (!(e instanceof AgentVpnError) || e.code !== 'DAEMON_NOT_RUNNING') throw e;
  }
  // No daemon: the file is the truth (and a corrupt one says so here, with its hint).
  return { mode: null, entries: TrustStore.open(stateDir(args['state-dir']), args.network).list() };
}

const listCommand: CommandModule<GlobalArgs, ListArgs> = {
  command: 'list',
  describe: 'List the agents this agent trusts, waits for, refused or blocked, with their key fingerprints',
  builder: (y) =>
    y.option('interface', interfaceOption)
      .option('state-dir', { type: 'string', describe: `with no daemon running, read the trust store from here (default ${DEFAULT_STATE_DIR})` })
      .option('network', { type: 'string', default: 'default', describe: 'with no daemon running, the network whose trust store to read' }),
  handler: runCommand(async (args) => {
    const list = await trustList(args);
    printResult(args.json, { ...list }, () => formatTrustList(list));
  }),
};

/** One operator action: a control method of the daemon taking a name (or, for block, an ID). */
function action(name: string, method: string, what: string, describe: string, done: string): CommandModule<GlobalArgs, ActionArgs> {
  return {
    command: `${name} <target>`,
    describe,
    builder: (y) =>
      (y as Argv<GlobalArgs>).option('interface', interfaceOption)
        .positional('target', { type: 'string', demandOption: true, describe: what }) as unknown as Argv<ActionArgs>,
    handler: runCommand(async (args) => {
      const params = method === 'trustBlock' ? { target: args.target } : { name: args.target };
      const result = ((await callDaemon(args.interface, method, params)) ?? {}) as { entry?: { name?: string | null; id?: string; state?: string; key?: string } };
      const e = result.entry;
      printResult(args.json, { ...result }, () => {
        const key = e?.key ? `, key ${fingerprint(e.key)}` : '';
        return `${e?.name ?? args.target}: ${done}${e?.state ? ` (now ${e.state}${key})` : ''}`;
      });
    }),
  };
}

export const trustCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'trust <command>',
  describe: 'Show and decide which agents this agent trusts (TOFU pins, approvals, blocks)',
  builder: (y) =>
    y.command(listCommand)
      .command(action('accept', 'trustAccept', 'the agent name', 'Trust the changed key offered for NAME (replaces the pinned one)', 'the offered key is pinned'))
      .command(action('approve', 'trustApprove', 'the agent name', 'Let in an agent that waits for approval (--trust approve)', 'approved'))
      .command(action('block', 'trustBlock', 'the agent name or ID (av...)', 'Never admit this agent (by name or agent ID)', 'blocked'))
      .command(action('forget', 'trustForget', 'the agent name', 'Drop the entry: the next agent with this name is trusted on first use again', 'forgotten'))
      .demandCommand(1, 'no trust command given (list, accept, approve, block, forget)'),
  handler: () => {},
};
