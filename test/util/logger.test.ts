import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stderrIsJournal } from '../../src/util/logger.js';

const LOGGER = new URL('../../dist/util/logger.js', import.meta.url).href;
const dir = mkdtempSync(join(tmpdir(), 'avpn-logger-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs createLogger in a child whose stderr is a file; JOURNAL_STREAM names that file (or another). */
function logLine(journal: 'same' | 'other' | 'unset'): Record<string, unknown> {
  const path = join(dir, `${journal}.log`);
  const fd = openSync(path, 'w');
  const st = statSync(path);
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.JOURNAL_STREAM;
  if (journal === 'same') env.JOURNAL_STREAM = `${st.dev}:${st.ino}`;
  if (journal === 'other') env.JOURNAL_STREAM = `${st.dev}:${st.ino + 1}`; // systemd's stream, but stderr was redirected
  const script = `import(${JSON.stringify(LOGGER)}).then((m) => m.createLogger('info', { component: 'test' }).info({ event: 'hello' }, 'one line'))`;
  const r = spawnSync(process.execPath, ['-e', script], { env, stdio: ['ignore', 'ignore', fd] });
  closeSync(fd);
  expect(r.status).toBe(0);
  const lines = readFileSync(path, 'utf8').trim().split('\n');
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]);
}

describe('logger under systemd', () => {
  it('leaves out pino\'s timestamp when stderr is the journal (which stamps each line itself)', () => {
    const line = logLine('same');
    expect(line).toMatchObject({ level: 30, component: 'test', event: 'hello', msg: 'one line' });
    expect(line).not.toHaveProperty('time');
  });

  it('keeps it when stderr is not the journal\'s stream, or there is no journal', () => {
    expect(logLine('other')).toHaveProperty('time');
    expect(logLine('unset')).toHaveProperty('time');
  });

  it('JOURNAL_STREAM must be DEV:INODE of our stderr', () => {
    const path = join(dir, 'x');
    const fd = openSync(path, 'w');
    const st = statSync(path);
    expect(stderrIsJournal({ JOURNAL_STREAM: `${st.dev}:${st.ino}` }, fd)).toBe(true);
    expect(stderrIsJournal({ JOURNAL_STREAM: 'junk' }, fd)).toBe(false);
    expect(stderrIsJournal({}, fd)).toBe(false);
    closeSync(fd);
  });
});
