import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AgentVpnError } from '../../src/errors.js';
import { parseJsonc, MAX_JSONC_DEPTH } from '../../src/policy/jsonc.js';
import {
  formatIpEntry, formatPolicy, formatSelector, parseIpEntry, parsePolicy, parseSelector, parseStaticPolicy, type Policy,
} from '../../src/policy/parse.js';

function errorOf(f: () => unknown): AgentVpnError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(AgentVpnError);
    return e as AgentVpnError;
  }
  throw new Error('expected an error');
}

const withoutLines = (p: Policy) => ({ grants: p.grants.map(({ line: _line, ...g }) => g) });

describe('parsePolicy', () => {
  it('reads grants with comments, selectors, ip entries and app capabilities', () => {
    const p = parsePolicy(`{
      // who may reach whom
      "grants": [
        { "src": ["tag:web", "name:alpha"], "dst": ["cap:db.postgres@16"], "ip": ["tcp:5432", "icmp"] },
        /* block */ { "src": ["*"], "dst": ["*"], "ip": ["udp:53", "tcp:8000-8999", "tcp:*"],
          "app": { "example.com/cap/files": [{ "paths": ["/tmp"] }] } }
      ]
    }`);
    expect(p.grants).toHaveLength(2);
    expect(p.grants[0].line).toBe(4);
    expect(p.grants[0].src).toEqual([{ kind: 'tag', tag: 'web' }, { kind: 'name', name: 'alpha' }]);
    expect(p.grants[0].dst[0]).toMatchObject({ kind: 'cap', cap: { name: 'db.postgres', version: '16' } });
    expect(p.grants[1].ip).toEqual([{ proto: 'udp', low: 53, high: 53 }, { proto: 'tcp', low: 8000, high: 8999 }, { proto: 'tcp', low: 1, high: 65535 }]);
    expect(JSON.stringify(p.grants[1].app)).toBe('{"example.com/cap/files":[{"paths":["/tmp"]}]}');
  });

  it.each([
    ['{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:0"]}]}', '1:49', 'invalid ip entry "tcp:0"'],
    ['{"grants": [\n  {"src": ["nome:x"], "dst": ["*"], "ip": ["*"]}]}', '2:12', 'invalid selector "nome:x"'],
    ['{"grants": [{"src": ["cap:db"], "dst": ["*"], "ip": ["*"]}]}', '1:22', '"src" selects by capability'],
    ['{"grants": [{"src": ["*"], "dst": ["*"]}]}', '1:13', 'grant allows nothing'],
    ['{"grants": [], "grants": []}', '1:16', 'appears twice'],
    ['{"grants": [{"src": [], "dst": ["*"], "ip": ["*"]}]}', '1:21', '"src" is empty'],
    ['{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:9-3"]}]}', '1:49', 'invalid ip entry'],
    ['{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"], "port": 1}]}', '1:63', 'unknown field "port"'],
    ['{"grants": [] /* never closed', '1:15', 'never closed'],
    ['{"grants": [}', '1:13', 'unexpected character'],
    ['{"agents": {}, "grants": []}', '1:12', 'static-mode policy only'],
    ['[]', '1:1', 'must be an object'],
  ])('refuses %s at line:col with a hint', (text, where, what) => {
    const e = errorOf(() => parsePolicy(text));
    expect(e.code).toBe('POLICY_INVALID');
    expect(e.message).toContain(where);
    expect(e.message).toContain(what);
    expect(e.hint.length).toBeGreaterThan(10);
  });

  it('caps size, depth and app size before doing the work', () => {
    expect(errorOf(() => parsePolicy(' '.repeat(300 * 1024))).message).toContain('characters');
    const deep = `{"grants": [{"src": ["*"], "dst": ["*"], "app": {"a": ${'['.repeat(MAX_JSONC_DEPTH + 5)}${']'.repeat(MAX_JSONC_DEPTH + 5)}}}]}`;
    expect(errorOf(() => parsePolicy(deep)).message).toContain('nested');
    const big = JSON.stringify({ grants: [{ src: ['*'], dst: ['*'], app: { a: 'x'.repeat(5000) } }] });
    expect(errorOf(() => parsePolicy(big)).message).toContain('longer than');
  });

  it('"__proto__" is only a key', () => {
    const v = parseJsonc('{"__proto__": {"x": 1}}').value as Record<string, unknown>;
    expect(Object.keys(v)).toEqual(['__proto__']);
    expect((v as { x?: number }).x).toBeUndefined();
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });

  it('a static policy names agents by key', () => {
    const key = Buffer.alloc(32, 7).toString('base64');
    const { policy, agents } = parseStaticPolicy(`{"agents": {"beta": {"wgPublicKey": "${key}", "tags": ["web"]}}, "grants": []}`);
    expect(policy.grants).toEqual([]);
    expect(agents).toEqual([{ name: 'beta', wgPublicKey: key, tags: ['web'], capabilities: [] }]);
    expect(errorOf(() => parseStaticPolicy('{"agents": {"beta": {}}, "grants": []}')).message).toContain('wgPublicKey');
  });
});

// ---- properties -------------------------------------------------------------------------------

const name = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
/** What "src" may select by: not cap:, which agents claim for themselves. */
const source = fc.oneof(
  fc.constant('*'),
  name.map((n) => `name:${n}`),
  fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,12}$/).map((t) => `tag:${t}`),
);
const selector = fc.oneof(
  source,
  fc.tuple(fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,12}$/), fc.option(fc.stringMatching(/^[0-9]{1,3}$/), { nil: undefined }))
    .map(([n, v]) => `cap:${n}${v ? `@${v}` : ''}`),
);
const port = fc.integer({ min: 1, max: 65535 });
const ipEntry = fc.oneof(
  fc.constant('*'), fc.constant('icmp'),
  fc.tuple(fc.constantFrom('tcp', 'udp'), port).map(([p, n]) => `${p}:${n}`),
  fc.tuple(fc.constantFrom('tcp', 'udp'), port, port).map(([p, a, b]) => `${p}:${Math.min(a, b)}-${Math.max(a, b)}`),
  fc.constantFrom('tcp:*', 'udp:*'),
);
const grant = fc.record({
  src: fc.array(source, { minLength: 1, maxLength: 4 }),
  dst: fc.array(selector, { minLength: 1, maxLength: 4 }),
  ip: fc.array(ipEntry, { minLength: 1, maxLength: 4 }),
  app: fc.option(fc.dictionary(fc.stringMatching(/^[a-z][a-z./]{0,20}$/), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 3 }), { nil: undefined }),
}, { requiredKeys: ['src', 'dst', 'ip'] });

describe('policy parser properties (fast-check)', () => {
  it('round-trips: parse(format(parse(text))) equals parse(text)', () => {
    fc.assert(fc.property(fc.array(grant, { maxLength: 8 }), (grants) => {
      const text = JSON.stringify({ grants: grants.map((g) => (g.app === undefined ? { src: g.src, dst: g.dst, ip: g.ip } : g)) }, null, 1);
      const once = parsePolicy(text);
      const twice = parsePolicy(formatPolicy(once));
      expect(withoutLines(twice)).toEqual(withoutLines(once));
    }), { numRuns: 300 });
  });

  it('selectors and ip entries round-trip through their text forms', () => {
    fc.assert(fc.property(selector, (s) => {
      const parsed = parseSelector(s)!;
      expect(parsed).not.toBeNull();
      expect(parseSelector(formatSelector(parsed))).toEqual(parsed);
    }));
    fc.assert(fc.property(ipEntry, (s) => {
      const parsed = parseIpEntry(s)!;
      expect(parsed).not.toBeNull();
      expect(parseIpEntry(formatIpEntry(parsed))).toEqual(parsed);
    }));
  });

  it('comments and whitespace anywhere between tokens change nothing', () => {
    fc.assert(fc.property(fc.array(grant, { minLength: 1, maxLength: 4 }), fc.constantFrom(' ', '\n', '// c\n', '/* c */', '\t'), (grants, junk) => {
      const plain = JSON.stringify({ grants: grants.map((g) => ({ src: g.src, dst: g.dst, ip: g.ip })) });
      // Junk between tokens only: the parts outside strings (odd indices of the split are strings).
      const noisy = plain.split(/("(?:[^"\\]|\\.)*")/).map((part, i) => (i % 2 ? part : part.replace(/([{}[\],:])/g, `${junk}$1${junk}`))).join('');
      expect(withoutLines(parsePolicy(noisy))).toEqual(withoutLines(parsePolicy(plain)));
    }), { numRuns: 200 });
  });

  it('garbage never throws anything but AgentVpnError, and never hangs', () => {
    const text = fc.oneof(
      fc.string({ maxLength: 300 }),
      fc.string({ unit: fc.constantFrom('{', '}', '[', ']', '"', ':', ',', '/', '*', '\\', 'n', '1', ' ', '\n', 'e', '-', '.'), maxLength: 300 }),
      fc.jsonValue({ maxDepth: 6 }).map((v) => JSON.stringify(v)),
      fc.tuple(fc.array(grant, { maxLength: 3 }), fc.nat(200), fc.string({ maxLength: 5 }))
        .map(([g, at, s]) => { const t = JSON.stringify({ grants: g }); return t.slice(0, at) + s + t.slice(at); }),
    );
    fc.assert(fc.property(text, (t) => {
      const start = performance.now();
      for (const parse of [parsePolicy, parseStaticPolicy]) {
        try {
          parse(t);
        } catch (e) {
          expect(e).toBeInstanceOf(AgentVpnError);
          expect((e as AgentVpnError).message).toMatch(/^\d+:\d+: |characters/);
        }
      }
      expect(performance.now() - start).toBeLessThan(1000);
    }), { numRuns: 3000 });
  });

  it('parseJsonc agrees with JSON.parse on JSON', () => {
    fc.assert(fc.property(fc.jsonValue({ maxDepth: 5 }), (v) => {
      const text = JSON.stringify(v);
      expect(JSON.stringify(parseJsonc(text).value)).toBe(JSON.stringify(JSON.parse(text)));
    }), { numRuns: 500 });
  });
});
