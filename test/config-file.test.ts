import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, lchownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadUpSettings, readConfigFile, readTokenFile, resolveSettings, settingsFromEnv } from '../src/config/config-file.js';
import { readRootFile } from '../src/config/root-file.js';
import { AgentVpnError } from '../src/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'avpn-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function file(content: unknown, mode = 0o600): string {
  const path = join(dir, `c${n++}.json`);
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  chmodSync(path, mode);
  return path;
}

function refusal(f: () => unknown): AgentVpnError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(AgentVpnError);
    return e as AgentVpnError;
  }
  throw new Error('expected a refusal');
}

describe('config file: precedence flags > environment > file > defaults', () => {
  const path = file({ registry: 'https://file:7443', name: 'from-file', network: 'file-net', 'log-level': 'warn', mtu: 1400, cap: ['a'] });

  it('the file overrides the defaults', () => {
    const { settings, sources } = loadUpSettings({}, {}, path);
    expect(settings).toMatchObject({ registry: 'https://file:7443', name: 'from-file', network: 'file-net', 'log-level': 'warn', mtu: 1400, cap: ['a'], dns: true, trust: 'tofu', interface: 'agentvpn0' });
    expect(sources).toMatchObject({ name: 'file', mtu: 'file', dns: 'default' });
  });

  it('the environment overrides the file, flags override both', () => {
    const env = { AGENTVPN_NAME: 'from-env', AGENTVPN_LOG_LEVEL: 'debug', AGENTVPN_NETWORK: 'env-net' };
    const { settings, sources } = loadUpSettings({ name: 'from-flag', mtu: 1300 }, env, path);
    expect(settings).toMatchObject({ name: 'from-flag', 'log-level': 'debug', network: 'env-net', mtu: 1300, registry: 'https://file:7443' });
    expect(sources).toMatchObject({ name: 'flag', 'log-level': 'env', network: 'env', mtu: 'flag', registry: 'file' });
  });

  it('an empty yargs array is no flag (the file\'s caps stay); a false boolean flag is one', () => {
    const { settings } = loadUpSettings({ cap: [], dns: false }, {}, path);
    expect(settings.cap).toEqual(['a']);
    expect(settings.dns).toBe(false);
  });

  it('relative paths in the file are relative to its directory', () => {
    const p = file({ config: 'wg0.conf', policy: '/abs/policy.json' });
    expect(readConfigFile(p)).toEqual({ config: join(dir, 'wg0.conf'), policy: '/abs/policy.json' });
  });

  it('defaults are copies: changing one run\'s caps leaves the next run\'s alone', () => {
    const a = resolveSettings({ flags: {}, env: {}, file: {} }).settings;
    a.cap.push('x');
    expect(resolveSettings({ flags: {}, env: {}, file: {} }).settings.cap).toEqual([]);
  });
});

describe('config file: refusals name the key and say what to do', () => {
  it('an unknown key, with the closest known one', () => {
    const e = refusal(() => readConfigFile(file({ registy: 'https://x' })));
    expect(e.code).toBe('CONFIG_UNKNOWN_KEY');
    expect(e.message).toContain('"registy"');
    expect(e.hint).toContain('did you mean "registry"');
  });

  it('a wrong type, an out-of-range number, a value not among the choices', () => {
    for (const [content, key, hint] of [
      [{ mtu: '1400' }, '"mtu"', '"mtu": 1380'],
      [{ mtu: 100 }, '"mtu"', '"mtu": 1380'],
      [{ 'listen-port': 70000 }, '"listen-port"', '51820'],
      [{ dns: 'yes' }, '"dns"', 'true'],
      [{ cap: 'llm.plan' }, '"cap"', '["llm.plan"'],
      [{ 'log-level': 'verbose' }, '"log-level"', '"info"'],
      [{ trust: 'always' }, '"trust"', '"tofu"'],
    ] as const) {
      const e = refusal(() => readConfigFile(file(content)));
      expect(e.code).toBe('CONFIG_INVALID');
      expect(e.message).toContain(key);
      expect(e.hint).toContain(hint);
    }
  });

  it('not JSON, not an object, unreadable', () => {
    expect(refusal(() => readConfigFile(file('{"name": '))).code).toBe('CONFIG_INVALID');
    expect(refusal(() => readConfigFile(file('["name"]'))).message).toContain('one JSON object');
    expect(refusal(() => readConfigFile(join(dir, 'missing.json'))).code).toBe('CONFIG_UNREADABLE');
  });

  it('a bad environment variable or flag is named as such', () => {
    expect(refusal(() => settingsFromEnv({ AGENTVPN_LOG_LEVEL: 'loud' })).message).toContain('AGENTVPN_LOG_LEVEL');
    expect(refusal(() => loadUpSettings({ mtu: Number.NaN }, {}, undefined)).message).toContain('--mtu');
  });

  it('a file other users may write is refused: it steers a root daemon', () => {
    const e = refusal(() => readConfigFile(file({ name: 'x' }, 0o666)));
    expect(e.code).toBe('CONFIG_INSECURE');
    expect(e.hint).toContain('chmod 600');
    expect(readConfigFile(file({ name: 'x' }, 0o644))).toEqual({ name: 'x' });
  });

  it('--token-file: the token on its first line; refused when other users may read it, or when it is empty', () => {
    const write = (text: string, mode: number) => {
      const f = join(dir, `token-${mode.toString(8)}-${text.length}`);
      writeFileSync(f, text, { mode });
      chmodSync(f, mode);
      return f;
    };
    expect(readTokenFile(write('avj_secret\n', 0o600))).toBe('avj_secret');
    const readable = refusal(() => readTokenFile(write('avj_secret\n', 0o644)));
    expect(readable.code).toBe('CONFIG_INSECURE');
    expect(readable.hint).toContain('chmod 600');
    expect(refusal(() => readTokenFile(write('\n', 0o600))).code).toBe('CONFIG_INVALID');
    expect(refusal(() => readTokenFile(join(dir, 'no-such-token'))).code).toBe('CONFIG_UNREADABLE');
  });

  it('a symlink is followed only from a directory no other user may change', () => {
    const secret = join(dir, 'root-only');
    writeFileSync(secret, 'not-a-token-but-a-secret\n', { mode: 0o600 });
    const open = join(dir, 'open');
    mkdirSync(open, { mode: 0o777 });
    chmodSync(open, 0o777);
    symlinkSync(secret, join(open, 'token'));
    const e = refusal(() => readTokenFile(join(open, 'token')));
    expect(e.code).toBe('CONFIG_INSECURE');
    expect(e.message).toContain(`reached through ${open}, a directory other users may change`);
    // A link kept by its owner (config management, a secret volume) is followed.
    const kept = join(dir, 'kept');
    mkdirSync(kept, { mode: 0o755 });
    chmodSync(kept, 0o755);
    symlinkSync(secret, join(kept, 'token'));
    expect(readTokenFile(join(kept, 'token'))).toBe('not-a-token-but-a-secret');
  });

  it('a symlink anywhere on the path counts: one earlier than the file, or one another user owns', () => {
    // Alice owns her home; the operator's path goes through it. She points "vpn" at a root-only
    // directory that holds a file of the configured name.
    const rootOnly = join(dir, 'root-only-dir');
    mkdirSync(rootOnly, { mode: 0o700 });
    writeFileSync(join(rootOnly, 'token'), 'SECRET-ADMIN-TOKEN\n', { mode: 0o600 });
    const alice = join(dir, 'alice');
    mkdirSync(alice, { mode: 0o755 });
    chownSync(alice, 65534, 65534);
    symlinkSync(rootOnly, join(alice, 'vpn'));
    const e = refusal(() => readTokenFile(join(alice, 'vpn', 'token')));
    expect(e.code).toBe('CONFIG_INSECURE');
    expect(e.message).toContain(`reached through ${alice}`);
    // In a sticky directory (like /tmp) others may add entries: a link one of them owns is not followed.
    const sticky = join(dir, 'sticky');
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    symlinkSync(join(rootOnly, 'token'), join(sticky, 'token'));
    lchownSync(join(sticky, 'token'), 65534, 65534);
    expect(refusal(() => readTokenFile(join(sticky, 'token'))).message).toContain('owned by another user');
    // The same path through links root made is followed: to a directory, then relative, then to the file.
    symlinkSync(rootOnly, join(dir, 'by-root'));
    mkdirSync(join(dir, 'etc'), { mode: 0o755 });
    symlinkSync('../by-root/token', join(dir, 'etc', 'rel-token'));
    expect(readTokenFile(join(dir, 'etc', 'rel-token'))).toBe('SECRET-ADMIN-TOKEN');
  });

  it('a FIFO or a huge file in its place is refused before it is opened or read', () => {
    const sticky = join(dir, 'sticky-2');
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    // Another user's FIFO where the token file should be: opening it would block the daemon.
    execFileSync('mkfifo', [join(sticky, 'token')]);
    lchownSync(join(sticky, 'token'), 65534, 65534);
    expect(refusal(() => readTokenFile(join(sticky, 'token'))).message).toContain('not a regular file');
    const big = join(dir, 'big-token');
    writeFileSync(big, '');
    chmodSync(big, 0o600);
    truncateSync(big, 64 * 1024 * 1024);
    expect(refusal(() => readTokenFile(big)).message).toContain('larger than');
  });

  it('a static policy other users may change is refused', () => {
    const policy = join(dir, 'policy.json');
    writeFileSync(policy, '{"grants": []}');
    chmodSync(policy, 0o666);
    expect(refusal(() => readRootFile(policy)).code).toBe('CONFIG_INSECURE');
    chmodSync(policy, 0o644);
    expect(readRootFile(policy).text).toBe('{"grants": []}');
  });

  it('a token in a file other users may read is refused', () => {
    expect(refusal(() => readConfigFile(file({ token: 't' }, 0o644))).code).toBe('CONFIG_INSECURE');
    expect(readConfigFile(file({ token: 't' }, 0o600))).toEqual({ token: 't' });
  });
});
