/**
 * Nebula (slackhq/nebula) between lab namespaces, for comparison benchmarks: a throwaway CA and
 * host certs made with nebula-cert, lighthouse-less configs where every node knows every other
 * node's underlay address through static_host_map, one `nebula -config` process per node.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WaitAborted, runCommand, waitFor } from './proc.js';
import type { Lab, LabProcess } from './netns.js';

export interface NebulaNodeSpec {
  ns: string;
  /** Certificate / host name (letters, digits, '-'). */
  name: string;
  /** Overlay address with the network's prefix length, inside 100.64.0.0/10 (e.g. '100.64.1.1/10'). */
  overlay: string;
  /** Underlay address of this node (an address of its veth, e.g. '192.0.2.1'). */
  underlay: string;
  /** UDP port (default 4242). */
  port?: number;
  /** tun device name (default 'nebula1'). */
  dev?: string;
  /** tun MTU (default 1300, Nebula's own default). */
  mtu?: number;
}

export interface NebulaNode {
  spec: NebulaNodeSpec;
  /** Overlay address without prefix length. */
  ip: string;
  dev: string;
  process: LabProcess;
  configFile: string;
}

export interface NebulaNetwork {
  nodes: NebulaNode[];
  stop(): Promise<void>;
}

const q = (s: string): string => JSON.stringify(s); // a JSON string is a valid YAML scalar

function renderConfig(dir: string, node: NebulaNodeSpec, all: NebulaNodeSpec[]): string {
  const hostMap = all
    .filter((n) => n !== node)
    .map((n) => `  ${q(n.overlay.split('/')[0]!)}: [${q(`${n.underlay}:${n.port ?? 4242}`)}]`);
  return [
    'pki:',
    `  ca: ${q(join(dir, 'ca.crt'))}`,
    `  cert: ${q(join(dir, `${node.name}.crt`))}`,
    `  key: ${q(join(dir, `${node.name}.key`))}`,
    'static_host_map:',
    ...hostMap,
    'lighthouse:',
    '  am_lighthouse: false',
    '  interval: 60',
    '  hosts: []',
    'listen:',
    `  host: ${q(node.underlay)}`,
    `  port: ${node.port ?? 4242}`,
    'punchy:',
    '  punch: false',
    'relay:',
    '  am_relay: false',
    '  use_relays: false',
    'tun:',
    '  disabled: false',
    `  dev: ${q(node.dev ?? 'nebula1')}`,
    '  drop_local_broadcast: false',
    '  drop_multicast: false',
    '  tx_queue: 500',
    `  mtu: ${node.mtu ?? 1300}`,
    'logging:',
    '  level: info',
    '  format: text',
    'firewall:',
    '  outbound:',
    '    - port: any',
    '      proto: any',
    '      host: any',
    '  inbound:',
    '    - port: any',
    '      proto: any',
    '      host: any',
    '',
  ].join('\n');
}

/** Makes the PKI, writes configs, starts one nebula per node and waits for every tun device. */
export async function startNebula(
  lab: Lab, specs: NebulaNodeSpec[],
  opts: { timeoutMs?: number; /** default `nebula` from PATH */ binary?: string; /** default `nebula-cert` from PATH */ certBinary?: string } = {},
): Promise<NebulaNetwork> {
  const nebulaCert = opts.certBinary ?? 'nebula-cert';
  const dir = join(lab.dir, `nebula-${Date.now().toString(36)}`);
  await runCommand(['mkdir', '-m', '0700', '-p', dir], { check: true });
  await runCommand(
    [nebulaCert, 'ca', '-name', 'agentvpn-lab', '-duration', '24h', '-out-crt', join(dir, 'ca.crt'), '-out-key', join(dir, 'ca.key')],
    { check: true },
  );
  for (const s of specs) {
    if (!/^[a-z0-9-]+$/i.test(s.name)) throw new Error(`invalid nebula node name ${q(s.name)}`);
    lab.claimInterface(s.ns, s.dev ?? 'nebula1');
    await runCommand(
      [nebulaCert, 'sign', '-ca-crt', join(dir, 'ca.crt'), '-ca-key', join(dir, 'ca.key'), '-name', s.name, '-ip', s.overlay,
        '-out-crt', join(dir, `${s.name}.crt`), '-out-key', join(dir, `${s.name}.key`)],
      { check: true },
    );
  }
  const nodes: NebulaNode[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(nodes.map((n) => lab.kill(n.process)));
  };
  try {
    for (const s of specs) {
      const configFile = join(dir, `${s.name}.yml`);
      writeFileSync(configFile, renderConfig(dir, s, specs), { mode: 0o600 });
      const process = lab.spawn(s.ns, [opts.binary ?? 'nebula', '-config', configFile], { name: `nebula-${s.name}` });
      nodes.push({ spec: s, ip: s.overlay.split('/')[0]!, dev: s.dev ?? 'nebula1', process, configFile });
    }
    for (const n of nodes) {
      let exited = false;
      void n.process.exited.then(() => (exited = true));
      await waitFor(
        async () => {
          if (exited) throw new WaitAborted(`nebula ${n.spec.name} exited:\n${lab.logTail(n.process)}`);
          return lab.interfaceUp(n.spec.ns, n.dev);
        },
        { timeoutMs: opts.timeoutMs ?? 15_000, what: `nebula tun ${n.dev} up in ${n.spec.ns}` },
      );
    }
  } catch (e) {
    await stop().catch(() => {});
    throw e;
  }
  return { nodes, stop };
}
