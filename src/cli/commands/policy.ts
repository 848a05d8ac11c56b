import { readFileSync } from 'node:fs';
import type { CommandModule } from 'yargs';
import { callDaemon } from '../../daemon/control-client.js';
import { AgentVpnError } from '../../errors.js';
import type { AgentFacts } from '../../policy/compile.js';
import { explain } from '../../policy/explain.js';
import { parseStaticPolicy, type Policy } from '../../policy/parse.js';
import { interfaceOption, printResult, runCommand, type GlobalArgs } from '../output.js';

interface PolicyTestArgs extends GlobalArgs {
  src: string;
  dst: string;
  flow: string;
  policy?: string;
  interface: string;
}

/** An agent as the daemon's `id` and `peers` methods describe it (tags once the registry gives them). */
interface AgentInfo {
  id: string;
  name: string;
  ipv4?: string | null;
  ipv6?: string | null;
  tags?: string[];
  capabilities?: string[];
  wgPublicKey?: string;
}

function facts(a: AgentInfo): AgentFacts {
  return {
    id: a.id, name: a.name, tags: a.tags ?? [], capabilities: a.capabilities ?? [],
    ipv4: a.ipv4 ?? '', ipv6: a.ipv6 ?? '', wgPublicKey: a.wgPublicKey ?? a.id,
  };
}

/** The policy text: --policy FILE, else the one the running daemon enforces. */
async function policyText(args: PolicyTestArgs): Promise<{ text: string | null; source: string }> {
  if (args.policy) {
    try {
      return { text: readFileSync(args.policy, 'utf8'), source: args.policy };
    } catch (e) {
      throw new AgentVpnError('POLICY_UNREADABLE', `cannot read ${args.policy}: ${(e as Error).message}`, 'give --policy a readable policy file');
    }
  }
  try {
    const r = (await callDaemon(args.interface, 'policyGet')) as { text: string | null };
    return { text: r.text, source: `the daemon on ${args.interface}` };
  } catch (e) {
    if (e instanceof AgentVpnError && ['DAEMON_NOT_RUNNING', 'UNKNOWN_METHOD'].includes(e.code)) {
      throw new AgentVpnError(e.code, `no policy to test: ${e.message}`, 'give the policy file with --policy FILE');
    }
    throw e;
  }
}

/** Agents by name: the policy file's "agents" (static mode), else the running daemon's view of the fleet. */
async function agentsByName(args: PolicyTestArgs, fileAgents: AgentInfo[]): Promise<Map<string, AgentInfo>> {
  const byName = new Map(fileAgents.map((a) => [a.name, a]));
  if (byName.has(args.src) && byName.has(args.dst)) return byName;
  try {
    const self = (await callDaemon(args.interface, 'id')) as AgentInfo;
    const peers = (await callDaemon(args.interface, 'peers', {})) as AgentInfo[];
    for (const a of [self, ...peers]) if (a.name && !byName.has(a.name)) byName.set(a.name, a);
  } catch (e) {
    if (!(e instanceof AgentVpnError) || !['DAEMON_NOT_RUNNING', 'UNKNOWN_METHOD'].includes(e.code)) throw e;
  }
  return byName;
}

export const policyCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'policy <command>',
  describe: 'Check what the policy allows',
  builder: (y) => y.command<PolicyTestArgs>({
    command: 'test <flow>',
    describe: 'Whether --src may open FLOW (tcp:PORT, udp:PORT, icmp) to --dst, and the grant that decides',
    builder: (t) => t
      .positional('flow', { type: 'string', demandOption: true, describe: 'tcp:PORT, udp:PORT or icmp' })
      .option('src', { type: 'string', demandOption: true, describe: 'name of the agent that opens the flow' })
      .option('dst', { type: 'string', demandOption: true, describe: 'name of the agent it goes to' })
      .option('policy', { type: 'string', describe: 'policy file (default: the one the running daemon enforces)' })
      .option('interface', interfaceOption),
    handler: runCommand(async (args) => {
      const { text, source } = await policyText(args);
      let policy: Policy | null = null;
      let fileAgents: AgentInfo[] = [];
      if (text !== null) {
        let parsed: ReturnType<typeof parseStaticPolicy>;
        try {
          parsed = parseStaticPolicy(text);
        } catch (e) {
          if (e instanceof AgentVpnError) throw new AgentVpnError(e.code, `${args.policy ? `${source}:` : `the policy of ${source}: `}${e.message}`, e.hint);
          throw e;
        }
        policy = parsed.policy;
        fileAgents = parsed.agents.map((a) => ({ ...a, id: a.wgPublicKey }));
      }
      const agents = await agentsByName(args, fileAgents);
      const find = (name: string) => agents.get(name) ?? (() => {
        throw new AgentVpnError('AGENT_UNKNOWN', `no agent named "${name}" is known`, 'name agents in the policy file\'s "agents", or run this where a fleet daemon knows them (`agentvpn peers`)');
      })();
      const e = explain(policy, facts(find(args.src)), facts(find(args.dst)), args.flow);
      const grant = e.grant === null || policy === null ? null : { index: e.grant, line: policy.grants[e.grant].line };
      printResult(args.json, { allow: e.allow, src: args.src, dst: args.dst, flow: args.flow, grant, explanation: e.text, near: e.near, source },
        () => `${e.allow ? 'allow' : 'deny'}  ${args.src} -> ${args.dst} ${args.flow}\n${e.text}`);
      if (!e.allow) process.exitCode = 2; // scripts can test the answer without parsing it
    }),
  }).demandCommand(1, 'give a policy command: test'),
  handler: () => {},
};
