import { lstat, rm } from 'node:fs/promises';
import { connect } from 'node:net';

/**
 * Whether a process accepts connections on the unix socket at `path`. Nobody is there only on
 * ENOENT or ECONNREFUSED; a listener too busy to accept in time (a full backlog) is alive. Other
 * errors (EACCES, …) reject: whoever asks cannot tell, and must not act as if the socket were dead.
 */
export function socketAnswers(path: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    const done = (answer: boolean | Error): void => {
      clearTimeout(timer);
      sock.destroy();
      if (answer instanceof Error) reject(answer);
      else resolve(answer);
    };
    const timer = setTimeout(() => done(true), timeoutMs);
    sock.on('connect', () => done(true));
    sock.on('error', (e: NodeJS.ErrnoException) => done(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? false : e));
  });
}

/**
 * Before listening on `path`: removes a socket file a crashed process left; throws `inUse()` when a
 * live process answers on it, `notSocket()` when the path is something else.
 */
export async function removeStaleSocket(path: string, errors: { inUse: () => Error; notSocket: () => Error }, answers = socketAnswers): Promise<void> {
  const st = await lstat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  if (!st) return;
  if (!st.isSocket()) throw errors.notSocket();
  if (await answers(path)) throw errors.inUse();
  await rm(path, { force: true });
}
