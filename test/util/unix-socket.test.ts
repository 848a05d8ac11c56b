import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeStaleSocket, socketAnswers } from '../../src/util/unix-socket.js';

const dir = mkdtempSync(join(tmpdir(), 'agentvpn-unix-socket-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const errors = { inUse: () => new Error('in use'), notSocket: () => new Error('not a socket') };

describe('stale unix sockets', () => {
  it('removes a socket nobody listens on, refuses a live one and a file that is not a socket', async () => {
    const path = join(dir, 'a.sock');
    const server = createServer();
    await new Promise<void>((r) => server.listen(path, r));
    expect(await socketAnswers(path)).toBe(true);
    await expect(removeStaleSocket(path, errors)).rejects.toThrow('in use');
    expect(existsSync(path)).toBe(true);
    // A crashed process leaves its socket file behind: close the listener without unlinking it.
    (server as unknown as { _handle: { close(): void } })._handle.close();
    expect(await socketAnswers(path)).toBe(false);
    await removeStaleSocket(path, errors);
    expect(existsSync(path)).toBe(false);
    const file = join(dir, 'plain');
    writeFileSync(file, 'x');
    await expect(removeStaleSocket(file, errors)).rejects.toThrow('not a socket');
    expect(await socketAnswers(join(dir, 'missing.sock'))).toBe(false);
  });

  it('takes a listener that does not answer in time for alive (a full backlog is not a crash)', async () => {
    expect(await socketAnswers(join(dir, 'missing.sock'), 1)).toBe(false);
    const path = join(dir, 'slow.sock');
    const server = createServer();
    await new Promise<void>((r) => server.listen(path, r));
    // A 0 ms deadline fires before the connect completes: the answer must be "alive", never "dead".
    expect(await socketAnswers(path, 0)).toBe(true);
    server.close();
  });
});
