import { AgentVpnError } from '../errors.js';
import { NAME_PATTERN } from '../net/names.js';
import { formatCapability, parseCapability, type Capability } from '../net/capabilities.js';
import { jsoncError, lineIndex, parseJsonc, type JsonValue, type JsoncDocument } from './jsonc.js';

/**
 * The policy: capability grants. JSON with comments:
 *
 * | field            | type                  | meaning                                                        |
 * | ---------------- | --------------------- | -------------------------------------------------------------- |
 * | grants           | Grant[] (required)    | the union of these is allowed; everything else is denied       |
 * | grant.src        | Selector[] (≥ 1)      | agents that may open flows…                                    |
 * | grant.dst        | Selector[] (≥ 1)      | …to these agents                                               |
 * | grant.ip         | IpEntry[]             | …on these protocols/ports (may be empty when `app` is given)   |
 * | grant.app        | { capName: any JSON } | opaque capabilities the dst reads (whois) about the src        |
 *
 * Selectors: `*`, `name:NAME`, `tag:TAG`, `cap:CAPABILITY` (matched as net/capabilities.ts).
 * IpEntry: `*` (every protocol), `tcp:PORT`, `tcp:LOW-HIGH`, `tcp:*`, the same for `udp:`, `icmp`.
 * No policy at all = allow all; a policy = deny by default (a policy with no grants denies all).
 */
export type Selector =
  | { kind: 'any' }
  | { kind: 'name'; name: string }
  | { kind: 'tag'; tag: string }
  | { kind: 'cap'; cap: Capability };

export type IpEntry = { proto: 'any' } | { proto: 'icmp' } | { proto: 'tcp' | 'udp'; low: number; high: number };

export interface Grant {
  src: Selector[];
  dst: Selector[];
  ip: IpEntry[];
  /** Capability name -> opaque JSON value, for the destination's whois. */
  app?: Record<string, JsonValue>;
  /** Line of the grant in the policy text (1-based; 0 when built in code), for explanations. */
  line: number;
}

export interface Policy {
  grants: Grant[];
}

/** Limits: a policy is pushed to every agent and compiled against every peer on every change. */
export const MAX_GRANTS = 1000;
/** Selectors or ip entries in one grant list; more belongs in a tag. */
export const MAX_LIST = 64;
/** Capability names in one grant's `app`. */
export const MAX_APP_CAPS = 16;
/** One grant's `app` as JSON: whois answers carry it, so it stays small. */
export const MAX_APP_CHARS = 4096;
/** Tags look like names (they come from join tokens), with `.` and `_` allowed. */
export const TAG_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** App capability names: a domain-like path, e.g. `example.com/cap/files`. */
export const APP_CAP_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._~:/-]{0,127}$/;
/** Static mode only (`up --config --policy`): agents named by their WireGuard key. */
export const MAX_STATIC_AGENTS = 1024;

const CODE = 'POLICY_INVALID';
const HINTS = {
  top: 'a policy is {"grants": [...]}; each grant is {"src": [...], "dst": [...], "ip": [...], "app"?: {...}}',
  selector: 'selectors are "*", "name:NAME", "tag:TAG" or "cap:CAPABILITY" (e.g. "cap:llm.inference;model=llama3")',
  ip: 'ip entries are "*", "icmp", "tcp:8080", "tcp:8000-8999", "tcp:*", "udp:53" (ports 1..65535)',
  app: `app is {"example.com/cap/name": <any JSON>}: at most ${MAX_APP_CAPS} names, ${MAX_APP_CHARS} characters in all`,
  agents: 'static mode names agents by key: "agents": {"beta": {"wgPublicKey": "<base64>", "tags": [...], "capabilities": [...]}}',
};

class Reader {
  readonly lineOf: (offset: number) => number;
  constructor(readonly doc: JsoncDocument) {
    this.lineOf = lineIndex(doc.text);
  }
  fail(path: string, what: string, hint: string): never {
    throw jsoncError(CODE, this.doc.text, this.doc.offsets.get(path) ?? 0, what, hint);
  }
  object(v: JsonValue, path: string, what: string, hint: string): { [k: string]: JsonValue } {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) this.fail(path, `${what} must be an object`, hint);
    return v as { [k: string]: JsonValue };
  }
  strings(v: JsonValue | undefined, path: string, what: string, hint: string, max = MAX_LIST): string[] {
    if (!Array.isArray(v)) this.fail(path, `${what} must be a list of strings`, hint);
    const list = v as JsonValue[];
    if (list.length > max) this.fail(path, `${what} has ${list.length} entries, more than ${max}`, hint);
    list.forEach((s, i) => {
      if (typeof s !== 'string') this.fail(`${path}/${i}`, `${what} entries must be strings`, hint);
    });
    return list as string[];
  }
  onlyKeys(obj: object, allowed: string[], path: string, what: string, hint: string): void {
    for (const k of Object.keys(obj)) {
      if (!allowed.includes(k)) this.fail(`${path}/${k}`, `unknown field "${k.slice(0, 40)}" in ${what}`, hint);
    }
  }
}

export function parseSelector(text: string): Selector | null {
  if (text === '*') return { kind: 'any' };
  const colon = text.indexOf(':');
  const kind = text.slice(0, colon);
  const rest = text.slice(colon + 1);
  if (colon < 0 || rest.length === 0) return null;
  if (kind === 'name') return NAME_PATTERN.test(rest) ? { kind: 'name', name: rest } : null;
  if (kind === 'tag') return TAG_PATTERN.test(rest) ? { kind: 'tag', tag: rest } : null;
  if (kind === 'cap') {
    try {
      return { kind: 'cap', cap: parseCapability(rest) };
    } catch {
      return null;
    }
  }
  return null;
}

export function formatSelector(s: Selector): string {
  switch (s.kind) {
    case 'any': return '*';
    case 'name': return `name:${s.name}`;
    case 'tag': return `tag:${s.tag}`;
    case 'cap': return `cap:${formatCapability(s.cap)}`;
  }
}

const PORT = /^(?:[1-9]\d{0,4})$/;

export function parseIpEntry(text: string): IpEntry | null {
  if (text === '*') return { proto: 'any' };
  if (text === 'icmp') return { proto: 'icmp' };
  const m = /^(tcp|udp):(.{1,11})$/.exec(text);
  if (!m) return null;
  const proto = m[1] as 'tcp' | 'udp';
  if (m[2] === '*') return { proto, low: 1, high: 65535 };
  const [lo, hi, extra] = m[2].split('-');
  if (extra !== undefined || !PORT.test(lo) || (hi !== undefined && !PORT.test(hi))) return null;
  const low = Number(lo);
  const high = hi === undefined ? low : Number(hi);
  if (low > 65535 || high > 65535 || low > high) return null;
  return { proto, low, high };
}

export function formatIpEntry(e: IpEntry): string {
  if (e.proto === 'any' || e.proto === 'icmp') return e.proto === 'any' ? '*' : 'icmp';
  if (e.low === 1 && e.high === 65535) return `${e.proto}:*`;
  return e.low === e.high ? `${e.proto}:${e.low}` : `${e.proto}:${e.low}-${e.high}`;
}

/**
 * In fleet mode an agent's capabilities are what it claims in its own record: a `cap:` selector
 * in `src` would let any member grant itself access by claiming one. Sources are chosen by what
 * someone else vouches for: `tag:` (its join token), `name:` (unique, pinned by every peer). In
 * static mode the policy file itself says which agent has which capability, so there it may.
 */
const SELF_CLAIMED_SOURCE_HINT = 'in "src", select agents by tag: (from their join token) or name:; a cap: there would let any agent grant itself access by claiming the capability ("dst" may use cap:)';

function readGrant(r: Reader, v: JsonValue, path: string, capSources: boolean): Grant {
  const g = r.object(v, path, 'a grant', HINTS.top);
  r.onlyKeys(g, ['src', 'dst', 'ip', 'app'], path, 'a grant', HINTS.top);
  const selectors = (key: 'src' | 'dst'): Selector[] => {
    if (g[key] === undefined) r.fail(path, `grant has no "${key}"`, HINTS.top);
    const list = r.strings(g[key], `${path}/${key}`, `"${key}"`, HINTS.selector);
    if (list.length === 0) r.fail(`${path}/${key}`, `"${key}" is empty`, HINTS.selector);
    return list.map((s, i) => parseSelector(s) ?? r.fail(`${path}/${key}/${i}`, `invalid selector "${s.slice(0, 80)}"`, HINTS.selector));
  };
  const src = selectors('src');
  if (!capSources) {
    const i = src.findIndex((s) => s.kind === 'cap');
    if (i >= 0) r.fail(`${path}/src/${i}`, `"src" selects by capability (${formatSelector(src[i])})`, SELF_CLAIMED_SOURCE_HINT);
  }
  const dst = selectors('dst');
  const ipList = g.ip === undefined ? [] : r.strings(g.ip, `${path}/ip`, '"ip"', HINTS.ip);
  const ip = ipList.map((s, i) => parseIpEntry(s) ?? r.fail(`${path}/ip/${i}`, `invalid ip entry "${s.slice(0, 80)}"`, HINTS.ip));
  const line = r.lineOf(r.doc.offsets.get(path) ?? 0);
  if (g.app === undefined) {
    if (ip.length === 0) r.fail(path, 'grant allows nothing: give "ip" entries or "app" capabilities', HINTS.ip);
    return { src, dst, ip, line };
  }
  const app = r.object(g.app, `${path}/app`, '"app"', HINTS.app);
  const names = Object.keys(app);
  if (names.length > MAX_APP_CAPS) r.fail(`${path}/app`, `"app" has ${names.length} capabilities, more than ${MAX_APP_CAPS}`, HINTS.app);
  for (const n of names) if (!APP_CAP_PATTERN.test(n)) r.fail(`${path}/app/${n}`, `invalid app capability name "${n.slice(0, 80)}"`, HINTS.app);
  // The text is already capped and the depth checked, so measuring it cannot blow up.
  if (JSON.stringify(app).length > MAX_APP_CHARS) r.fail(`${path}/app`, `"app" is longer than ${MAX_APP_CHARS} characters as JSON`, HINTS.app);
  return { src, dst, ip, app, line };
}

function readGrants(r: Reader, top: { [k: string]: JsonValue }, capSources: boolean): Grant[] {
  if (!Array.isArray(top.grants)) r.fail(top.grants === undefined ? '' : '/grants', 'the policy needs "grants": a list', HINTS.top);
  const list = top.grants as JsonValue[];
  if (list.length > MAX_GRANTS) r.fail('/grants', `${list.length} grants, more than ${MAX_GRANTS}`, 'merge grants with tags, capabilities and port ranges');
  return list.map((g, i) => readGrant(r, g, `/grants/${i}`, capSources));
}

/** Parses and validates a policy (what the registry stores and pushes); every error says line:col. */
export function parsePolicy(text: string): Policy {
  const doc = parseJsonc(text);
  const r = new Reader(doc);
  const top = r.object(doc.value, '', 'the policy', HINTS.top);
  if ('agents' in top) r.fail('/agents', '"agents" belongs to a static-mode policy only', 'in fleet mode names, tags and capabilities come from the registry; remove "agents"');
  r.onlyKeys(top, ['grants'], '', 'the policy', HINTS.top);
  return { grants: readGrants(r, top, false) };
}

/** Static mode: who is who, since a wg-quick config has keys but no names. */
export interface StaticAgent {
  name: string;
  /** WireGuard public key, base64. */
  wgPublicKey: string;
  tags: string[];
  capabilities: string[];
}

const KEY_BASE64 = /^[A-Za-z0-9+/]{43}=$/;

/** A static-mode policy file (`up --config wg0.conf --policy FILE`): grants plus "agents". */
export function parseStaticPolicy(text: string): { policy: Policy; agents: StaticAgent[] } {
  const doc = parseJsonc(text);
  const r = new Reader(doc);
  const top = r.object(doc.value, '', 'the policy', HINTS.top);
  r.onlyKeys(top, ['grants', 'agents'], '', 'the policy', HINTS.top);
  const agentsObj = r.object(top.agents ?? Object.create(null), '/agents', '"agents"', HINTS.agents);
  const names = Object.keys(agentsObj);
  if (names.length > MAX_STATIC_AGENTS) r.fail('/agents', `more than ${MAX_STATIC_AGENTS} agents`, HINTS.agents);
  const agents = names.map((name): StaticAgent => {
    const path = `/agents/${name}`;
    if (!NAME_PATTERN.test(name)) r.fail(path, `invalid agent name "${name.slice(0, 80)}"`, 'names are lowercase letters, digits and -');
    const a = r.object(agentsObj[name], path, 'an agent', HINTS.agents);
    r.onlyKeys(a, ['wgPublicKey', 'tags', 'capabilities'], path, 'an agent', HINTS.agents);
    if (typeof a.wgPublicKey !== 'string' || !KEY_BASE64.test(a.wgPublicKey)) r.fail(path, `agent "${name}" needs "wgPublicKey": a base64 key`, HINTS.agents);
    const tags = a.tags === undefined ? [] : r.strings(a.tags, `${path}/tags`, '"tags"', HINTS.agents);
    tags.forEach((t, i) => TAG_PATTERN.test(t) || r.fail(`${path}/tags/${i}`, `invalid tag "${t.slice(0, 80)}"`, HINTS.agents));
    const capabilities = a.capabilities === undefined ? [] : r.strings(a.capabilities, `${path}/capabilities`, '"capabilities"', HINTS.agents);
    capabilities.forEach((c, i) => {
      try {
        parseCapability(c);
      } catch (e) {
        r.fail(`${path}/capabilities/${i}`, (e as AgentVpnError).message, (e as AgentVpnError).hint);
      }
    });
    return { name, wgPublicKey: a.wgPublicKey as string, tags, capabilities };
  });
  return { policy: { grants: readGrants(r, top, true) }, agents };
}

/** Canonical text of a policy (parsePolicy(formatPolicy(p)) equals p, apart from line numbers). */
export function formatPolicy(p: Policy): string {
  return JSON.stringify({
    grants: p.grants.map((g) => ({
      src: g.src.map(formatSelector),
      dst: g.dst.map(formatSelector),
      ip: g.ip.map(formatIpEntry),
      ...(g.app ? { app: g.app } : {}),
    })),
  }, null, 2);
}

/** One grant as short text for explanations: `grant #2 (line 7): tag:web -> name:db tcp:5432`. */
export function describeGrant(p: Policy, index: number): string {
  const g = p.grants[index];
  const where = g.line ? ` (line ${g.line})` : '';
  return `grant #${index + 1}${where}: ${g.src.map(formatSelector).join(',')} -> ${g.dst.map(formatSelector).join(',')} ${g.ip.map(formatIpEntry).join(',') || '(app only)'}`;
}
