import { AgentVpnError } from '../errors.js';
import { NAME_PATTERN } from '../net/names.js';
import { parseHostPort, type RelayInfo } from '../relay/protocol.js';

/**
 * The relays a registry advertises to joining agents: its built-in relay (unless --no-relay) and
 * the standalone `agentvpn relay` instances the operator lists, each with a name and a region.
 * Agents measure each, pick the nearest as their home relay and name it in their record.
 *
 *   --relay-peer NAME=udp://HOST:PORT[,tcp=http(s)://HOST:PORT/v1/relay][,region=REGION]
 *
 * NAME and REGION are lowercase letters, digits and '-' (up to 63), as agent names.
 */

/** The built-in relay's name and region unless the operator names them. */
export const BUILTIN_RELAY_NAME = 'registry';
export const DEFAULT_RELAY_REGION = 'default';
/** Relays one registry advertises, at most: every join answer carries the list, and agents probe each. */
export const MAX_ADVERTISED_RELAYS = 16;

const USAGE_HINT = 'give NAME=udp://HOST:PORT[,tcp=http(s)://HOST:PORT/v1/relay][,region=REGION], e.g. eu1=udp://198.51.100.7:7443,region=eu-west';

function refuse(text: string, why: string): never {
  throw new AgentVpnError('BAD_RELAY_PEER', `invalid --relay-peer "${text.slice(0, 200)}": ${why}`, USAGE_HINT);
}

/** Parses one --relay-peer value. */
export function parseRelayPeer(text: string): RelayInfo {
  const eq = text.indexOf('=');
  const name = eq < 0 ? '' : text.slice(0, eq);
  if (!NAME_PATTERN.test(name)) refuse(text, 'the relay needs a NAME (lowercase letters, digits and -)');
  const [udpPart, ...rest] = text.slice(eq + 1).split(',');
  if (!udpPart.startsWith('udp://')) refuse(text, 'the address comes first, as udp://HOST:PORT');
  const udp = udpPart.slice('udp://'.length);
  try {
    parseHostPort(udp, 'relay UDP address');
  } catch {
    refuse(text, `"${udp}" is not HOST:PORT`);
  }
  const info: RelayInfo = { name, udp, region: DEFAULT_RELAY_REGION };
  for (const part of rest) {
    const [key, ...v] = part.split('=');
    const value = v.join('=');
    if (key === 'tcp') {
      let url: URL | null = null;
      try {
        url = new URL(value);
      } catch {
        // refused below
      }
      if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) refuse(text, `tcp= must be an http(s):// URL, not "${value}"`);
      info.tcp = value;
    } else if (key === 'region') {
      if (!NAME_PATTERN.test(value)) refuse(text, 'region= is lowercase letters, digits and -');
      info.region = value;
    } else {
      refuse(text, `unknown part "${key}" (only tcp= and region=)`);
    }
  }
  return info;
}

/** The advertised list: the built-in relay first, then the listed ones; names must be unique. */
export function advertisedRelays(builtin: RelayInfo | null, peers: readonly RelayInfo[]): RelayInfo[] {
  const all = [...(builtin ? [builtin] : []), ...peers];
  const seen = new Set<string>();
  for (const r of all) {
    if (r.name !== undefined && !NAME_PATTERN.test(r.name)) throw new AgentVpnError('BAD_RELAY_NAME', `invalid relay name "${r.name.slice(0, 80)}"`, 'relay names are lowercase letters, digits and -, up to 63');
    if (r.region !== undefined && !NAME_PATTERN.test(r.region)) throw new AgentVpnError('BAD_RELAY_NAME', `invalid relay region "${r.region.slice(0, 80)}"`, 'regions are lowercase letters, digits and -, up to 63');
    const name = r.name ?? r.udp;
    if (seen.has(name)) throw new AgentVpnError('BAD_RELAY_PEER', `two relays are named "${name}"`, 'give every --relay-peer (and --relay-name for the built-in relay) its own name');
    seen.add(name);
  }
  if (all.length > MAX_ADVERTISED_RELAYS) {
    throw new AgentVpnError('BAD_RELAY_PEER', `${all.length} relays listed; at most ${MAX_ADVERTISED_RELAYS}`, 'list the relays agents should choose from; a region needs one or two');
  }
  return all;
}
