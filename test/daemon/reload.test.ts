import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { loadUpSettings, type SettingKey, type UpSettings } from '../../src/config/config-file.js';
import { Reloader } from '../../src/daemon/reload.js';

const dir = mkdtempSync(join(tmpdir(), 'avpn-reload-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = join(dir, 'agentvpn0.json');
const write = (o: unknown) => {
  writeFileSync(file, JSON.stringify(o));
  chmodSync(file, 0o600);
};

function reloader() {
  const applied: { next: UpSettings; changed: readonly SettingKey[] }[] = [];
  let reads = 0;
  const flags = { name: 'flagged' };
  const current = loadUpSettings(flags, {}, file).settings;
  const r = new Reloader(current, { flags, env: {}, configFile: file }, {
    live: ['cap', 'log-level'],
    apply: async (next, changed) => {
      applied.push({ next, changed });
      await new Promise((res) => setTimeout(res, 20));
    },
    refresh: async () => {
      reads++;
      return [];
    },
  }, pino({ level: 'silent' }));
  return { r, applied, reads: () => reads };
}

describe('Reloader', () => {
  it('applies live settings, keeps the rest at their running values and reports them each time', async () => {
    write({ registry: 'https://r:7443', cap: ['a'], mtu: 1380 });
    const { r, applied } = reloader();
    write({ registry: 'https://r:7443', cap: ['a', 'b'], mtu: 1300, 'log-level': 'debug', name: 'ignored' });
    const report = await r.reload();
    expect(report.applied).toEqual(['cap', 'log-level']);
    expect(report.needsRestart).toEqual(['mtu']); // name: the flag wins over the file, so it did not change
    expect(applied[0].next.cap).toEqual(['a', 'b']);
    expect(r.current.mtu).toBe(1380);
    expect((await r.reload()).needsRestart).toEqual(['mtu']);
    expect((await r.reload()).applied).toEqual([]);
  });

  it('a file that no longer parses is refused and changes nothing', async () => {
    write({ cap: ['a'] });
    const { r, applied } = reloader();
    write({ cap: ['a'], bogus: 1 });
    await expect(r.reload()).rejects.toMatchObject({ code: 'CONFIG_UNKNOWN_KEY', message: expect.stringContaining('nothing changed') });
    expect(applied).toEqual([]);
    expect(r.current.cap).toEqual(['a']);
  });

  it('a burst of reloads (SIGHUPs) reads the file at most twice', async () => {
    write({ cap: ['a'] });
    const { r, reads } = reloader();
    write({ cap: ['b'] });
    const reports = await Promise.all(Array.from({ length: 50 }, () => r.reload()));
    console.log(`50 reloads at once: ${reads()} reads`);
    expect(reads()).toBeLessThanOrEqual(2);
    expect(reports[0].applied).toEqual(['cap']);
  });
});
