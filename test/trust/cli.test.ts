import { mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cliEnvironment } from '../fixtures/cli-env.js';
import { ControlServer } from '../../src/daemon/control-server.js';
import { Identity } from '../../src/identity/identity.js';
import { TrustStore, type TrustListEntry } from '../../src/trust/store.js';
import { formatTrustList } from '../../src/cli/commands/trust.js';

/** The built CLI with a private run dir (see the fixture). */
const { env: cliEnv, cli } = cliEnvironment('agentvpn-trust-cli-');
const servers = cliEnv.servers;

/** A trust store with a pinned beta that was offered another key, and a pending gamma. */
function sampleList(dir: string): TrustListEntry[] {
  const store = TrustStore.open(dir, 'lab');
  const beta = Identity.generate();
  const impostor = Identity.generate();
  const gamma = Identity.generate();
  const at = Date.UTC(2026, 11, 1, 9, 20);
  const b64 = (i: Identity): string => Buffer.from(i.publicKey).toString('base64');
  store.apply({
    remove: [],
    put: [
      { id: beta.id, name: 'beta', ipv4: '100.64.0.2', key: b64(beta), keySeq: 0, state: 'changed', firstSeen: at - 60_000, lastSeen: at, offered: { id: impostor.id, name: 'beta', ipv4: '100.64.0.9', key: b64(impostor), keySeq: 0, at } },
      { id: gamma.id, name: 'gamma', ipv4: '100.64.0.3', key: b64(gamma), keySeq: 0, state: 'pending', firstSeen: at, lastSeen: at },
    ],
  }, at);
  store.flush();
  return store.list();
}

describe('agentvpn trust / key CLI', () => {
  it('argument errors exit 1 with USAGE', async () => {
    for (const args of [['trust'], ['trust', 'accept'], ['trust', 'frobnicate', 'x'], ['trust', 'block'], ['key'], ['key', 'frob']]) {
      const human = await cli(args);
      expect(human.code, args.join(' ')).toBe(1);
      expect(human.stderr).toMatch(/^error: .+\nhint: /);
      const json = await cli([...args, '--json']);
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toMatchObject({ ok: false, code: 'USAGE' });
    }
    const help = await cli(['trust', '--help']);
    for (const c of ['list', 'accept', 'approve', 'block', 'forget']) expect(help.stdout).toContain(c);
  });

  it('trust list: the JSON shape is the daemon answer; the table is aligned with an alert line', async () => {
    const entries = sampleList(await mkdtemp(join(cliEnv.base, 'state-')));
    const s = new ControlServer('trust0', { trustList: () => ({ mode: 'tofu', entries }) });
    servers.push(s);
    await s.start();
    const j = await cli(['trust', 'list', '-i', 'trust0', '--json']);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toEqual({ ok: true, mode: 'tofu', entries });
    const beta = entries.find((e) => e.name === 'beta')!;
    expect(Object.keys(beta).sort()).toEqual(['fingerprint', 'firstSeen', 'id', 'ipv4', 'key', 'keySeq', 'lastSeen', 'name', 'offered', 'state']);
    expect(Object.keys(beta.offered!).sort()).toEqual(['at', 'fingerprint', 'id', 'ipv4', 'key', 'keySeq', 'name']);
    const h = await cli(['trust', 'list', '-i', 'trust0']);
    expect(h.code).toBe(0);
    const lines = h.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe('trust mode: tofu');
    expect(lines[1]).toMatch(/^NAME {3}STATE {4}ID {54}KEY {22}OFFERED {18}SINCE$/);
    expect(lines[2]).toMatch(new RegExp(`^beta   changed  ${beta.id}  SHA256:\\S{16}  SHA256:\\S{16}  2026-12-01 09:20$`));
    expect(lines[3]).toMatch(/^gamma  pending  av\S{52}  SHA256:\S{16}  - {24}2026-12-01 09:20$/);
    expect(h.stdout).toContain(`alert: beta was offered agent ${beta.offered!.id} as beta (100.64.0.9), key ${beta.offered!.fingerprint}: refused; check it, then \`agentvpn trust accept beta\``);
    expect(h.stdout).toContain('pending: gamma waits for `agentvpn trust approve gamma`');
    expect(formatTrustList({ mode: 'open', entries: [] })).toBe('trust mode: open\nno agents in the trust store yet');
  });

  it('trust actions and key rotate call the control methods with their parameters', async () => {
    const calls: Array<[string, unknown]> = [];
    const entry = { id: 'avx', name: 'beta', state: 'pinned', key: Buffer.alloc(32, 1).toString('base64') };
    const handler = (m: string) => (p: unknown) => {
      calls.push([m, p]);
      return { entry };
    };
    const s = new ControlServer('trust0', {
      trustAccept: handler('trustAccept'), trustApprove: handler('trustApprove'), trustBlock: handler('trustBlock'), trustForget: handler('trustForget'),
      keyRotate: (p) => {
        calls.push(['keyRotate', p]);
        return { id: 'avself', seq: 2, key: Buffer.alloc(32, 2).toString('base64') };
      },
    });
    servers.push(s);
    await s.start();
    const accept = await cli(['trust', 'accept', 'beta', '-i', 'trust0']);
    expect(accept).toMatchObject({ code: 0, stdout: expect.stringMatching(/^beta: the offered key is pinned \(now pinned, key SHA256:/) });
    expect(JSON.parse((await cli(['trust', 'approve', 'beta', '-i', 'trust0', '--json'])).stdout)).toEqual({ ok: true, entry });
    await cli(['trust', 'block', 'avsomeid', '-i', 'trust0']);
    await cli(['trust', 'forget', 'beta', '-i', 'trust0']);
    const rotate = await cli(['key', 'rotate', '-i', 'trust0', '--json']);
    expect(JSON.parse(rotate.stdout)).toEqual({ ok: true, id: 'avself', seq: 2, key: Buffer.alloc(32, 2).toString('base64') });
    expect((await cli(['key', 'rotate', '-i', 'trust0'])).stdout).toMatch(/^rotated avself to key SHA256:\S{43} \(rotation 2\)\n$/);
    expect(calls).toEqual([
      ['trustAccept', { name: 'beta' }], ['trustApprove', { name: 'beta' }], ['trustBlock', { target: 'avsomeid' }], ['trustForget', { name: 'beta' }],
      ['keyRotate', {}], ['keyRotate', {}],
    ]);
  });

  it('without a daemon: list reads the state dir (a corrupt store says so); actions say no daemon', async () => {
    const dir = await mkdtemp(join(cliEnv.base, 'state-'));
    const entries = sampleList(dir);
    const j = await cli(['trust', 'list', '-i', 'nobody0', '--state-dir', dir, '--network', 'lab', '--json']);
    expect(JSON.parse(j.stdout)).toEqual({ ok: true, mode: null, entries });
    await writeFile(join(dir, 'trust-lab.json'), '{"v":1,');
    const bad = await cli(['trust', 'list', '-i', 'nobody0', '--state-dir', dir, '--network', 'lab', '--json']);
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stdout)).toMatchObject({ ok: false, code: 'TRUST_STORE_CORRUPT', hint: expect.stringMatching(/restore it from a backup/) });
    const accept = await cli(['trust', 'accept', 'beta', '-i', 'nobody0', '--json']);
    expect(JSON.parse(accept.stdout)).toMatchObject({ ok: false, code: 'DAEMON_NOT_RUNNING' });
    expect(JSON.parse((await cli(['key', 'rotate', '-i', 'nobody0', '--json'])).stdout)).toMatchObject({ ok: false, code: 'DAEMON_NOT_RUNNING' });
  });
});
