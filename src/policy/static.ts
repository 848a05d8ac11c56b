import { unwatchFile, watchFile } from 'node:fs';
import { readRootFile } from '../config/root-file.js';
import type { DeviceConfig } from '../config/types.js';
import { encodeKey } from '../crypto/keys.js';
import { publicKeyOf } from '../crypto/x25519.js';
import { AgentVpnError } from '../errors.js';
import { formatAddress } from '../ip/prefix.js';
import type { Logger } from '../wireguard/device.js';
import { compilePolicy, type AgentFacts, type CompiledPolicy } from './compile.js';
import { PolicyFilter } from './filter.js';
import { parseStaticPolicy, type StaticAgent } from './parse.js';

/**
 * Static mode's policy (`up --config wg0.conf --policy FILE`): the file's "agents" say which
 * WireGuard key is which named agent (a wg-quick config has keys only), its "grants" what they
 * may do. The file is watched: a changed file is swapped in live (sessions untouched); a file
 * that no longer parses is logged and the policy in force stays.
 */

/** How often the file's mtime is looked at: a policy edit applies within about a second. */
const WATCH_INTERVAL_MS = 500;

/** The first IPv4 and IPv6 host address among a peer's allowed IPs (for explanations and whois). */
function addressesOf(config: DeviceConfig, wgKey: string): { ipv4: string; ipv6: string } {
  const peer = config.peers.find((p) => encodeKey(p.publicKey) === wgKey);
  const prefixes = peer ? peer.allowedIps : config.addresses;
  const v4 = prefixes.find((p) => p.family === 4);
  const v6 = prefixes.find((p) => p.family === 6);
  return { ipv4: v4 ? formatAddress(v4.addr) : '', ipv6: v6 ? formatAddress(v6.addr) : '' };
}

function factsOf(a: StaticAgent, config: DeviceConfig): AgentFacts {
  return { id: a.wgPublicKey, name: a.name, tags: a.tags, capabilities: a.capabilities, wgPublicKey: a.wgPublicKey, ...addressesOf(config, a.wgPublicKey) };
}

function readPolicyFile(file: string): string {
  try {
    return readRootFile(file).text;
  } catch (e) {
    if (e instanceof AgentVpnError) throw e;
    throw new AgentVpnError('POLICY_UNREADABLE', `cannot read policy file ${file}: ${(e as Error).message}`, 'give --policy a readable JSON policy file', { cause: e });
  }
}

/** Reads and compiles a static policy file for this device. */
export function compileStaticPolicy(file: string, config: DeviceConfig, text = readPolicyFile(file)): CompiledPolicy {
  let parsed: ReturnType<typeof parseStaticPolicy>;
  try {
    parsed = parseStaticPolicy(text);
  } catch (e) {
    if (e instanceof AgentVpnError) throw new AgentVpnError(e.code, `${file}:${e.message}`, e.hint);
    throw e;
  }
  const ownKey = encodeKey(publicKeyOf(config.privateKey));
  const self = parsed.agents.find((a) => a.wgPublicKey === ownKey);
  if (!self) {
    throw new AgentVpnError('POLICY_INVALID', `${file}: no agent in "agents" has this device's key ${ownKey}`,
      'name this device too, e.g. "agents": {"alpha": {"wgPublicKey": "<its public key>"}}');
  }
  const peers = parsed.agents.filter((a) => a !== self).map((a) => factsOf(a, config));
  return compilePolicy(parsed.policy, factsOf(self, config), peers);
}

/**
 * A filter enforcing the file's policy, kept up to date while `stop()` is not called; `text()` is
 * the policy in force (what `agentvpn policy test` asks the daemon for).
 */
export function watchStaticPolicy(file: string, config: DeviceConfig, log: Logger): { filter: PolicyFilter; text(): string; stop(): void } {
  const filter = new PolicyFilter();
  let inForce = readPolicyFile(file);
  filter.setPolicy(compileStaticPolicy(file, config, inForce));
  const onChange = (cur: { mtimeMs: number }, prev: { mtimeMs: number }) => {
    if (cur.mtimeMs === prev.mtimeMs) return;
    try {
      const text = readPolicyFile(file);
      filter.setPolicy(compileStaticPolicy(file, config, text));
      inForce = text;
      log.info({ file }, 'policy reloaded');
    } catch (e) {
      const err = e as AgentVpnError;
      log.warn({ file, error: err.message, hint: err.hint }, 'policy file changed but does not parse; keeping the policy in force');
    }
  };
  watchFile(file, { interval: WATCH_INTERVAL_MS }, onChange);
  return { filter, text: () => inForce, stop: () => unwatchFile(file, onChange) };
}
