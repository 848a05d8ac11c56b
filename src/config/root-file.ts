import { closeSync, constants, fstatSync, lstatSync, openSync, readSync, readlinkSync, type Stats } from 'node:fs';
import { join, resolve } from 'node:path';
import { AgentVpnError } from '../errors.js';

/**
 * Files the root daemon reads on an operator's word (a config file, a join token, a wg-quick
 * config, a static policy): whoever may change one, or any directory on its path, steers the
 * daemon, and a symlink planted where another user can write could point it at a root-only file
 * (whose first line would go to the registry as the join token).
 *
 * The path is walked one component at a time with lstat: every directory on the way, the
 * directories holding the symlinks it follows included, must be root's or ours and not writable
 * by group or others (a sticky directory like /tmp is fine: there, others cannot replace our
 * entries), and every symlink root's or ours. No one else can then change what the path names between the walk and the open, so
 * the check has no race. The file itself is opened without following a link and checked by fstat.
 */

/** Symlinks followed on one path at most, as the kernel's limit. */
const MAX_LINKS = 40;
/** The largest such file read: a policy for a big fleet fits many times over. */
const MAX_BYTES = 4 * 1024 * 1024;

const euid = () => process.geteuid?.() ?? 0;
const ownedByUs = (st: Stats) => st.uid === 0 || st.uid === euid();
const mode = (st: Stats) => (st.mode & 0o7777).toString(8);

function checkDirectory(file: string, dir: string, st: Stats): void {
  const othersMayChange = (st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0;
  if (!ownedByUs(st) || othersMayChange) {
    throw new AgentVpnError('CONFIG_INSECURE', `${file} is reached through ${dir}, a directory other users may change (owner uid ${st.uid}, mode ${mode(st)})`,
      `keep the file, and every directory and symlink on its path, where only root can write (e.g. /etc/agentvpn), or \`chown root ${dir} && chmod go-w ${dir}\``);
  }
}

/** Opens `file` for reading once every directory on its path is checked (see above); fs errors as they are. */
export function openRootFile(file: string): number {
  const parts = resolve(file).split('/').filter(Boolean);
  let at = '/';
  checkDirectory(file, at, lstatSync(at));
  let links = 0;
  while (parts.length > 0) {
    const name = parts.shift()!;
    if (name === '.' || name === '..') {
      at = resolve(at, name);
      continue;
    }
    const next = join(at, name);
    const st = lstatSync(next);
    if (st.isSymbolicLink()) {
      // In a sticky directory a link's owner may replace it: only root's and ours are followed.
      if (!ownedByUs(st)) {
        throw new AgentVpnError('CONFIG_INSECURE', `${file} is reached through the symlink ${next}, owned by another user (uid ${st.uid})`,
          'give the file\'s own path, or a link that root made');
      }
      if (++links > MAX_LINKS) throw fsError(`too many symlinks on the path ${file}`, 'ELOOP');
      const target = readlinkSync(next);
      if (target.startsWith('/')) at = '/';
      parts.unshift(...target.split('/').filter(Boolean));
    } else if (parts.length === 0) {
      return openChecked(file, next, st);
    } else {
      if (!st.isDirectory()) throw fsError(`${next} is not a directory`, 'ENOTDIR');
      checkDirectory(file, next, st);
      at = next;
    }
  }
  // The path named a directory (e.g. "/" or "dir/..").
  throw fsError(`${at} is a directory`, 'EISDIR');
}

/**
 * Opens the path's last component, a regular file that is root's or ours and that others may not
 * change, checked before it is opened: a FIFO or device another user left in a sticky directory
 * would else block the open, and a huge file exhaust memory, before the owner was looked at. The
 * open does not block or follow a link, and must find the file that was checked.
 */
function openChecked(file: string, path: string, st: Stats): number {
  if (st.isDirectory()) throw fsError(`${path} is a directory`, 'EISDIR');
  if (!st.isFile()) throw fsError(`${path} is not a regular file`, 'EINVAL');
  checkRootFileMode(file, st, null);
  if (st.size > MAX_BYTES) throw fsError(`${path} is larger than ${MAX_BYTES / 1024} KiB`, 'EFBIG');
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  const opened = fstatSync(fd);
  if (opened.ino !== st.ino || opened.dev !== st.dev) {
    closeSync(fd);
    throw fsError(`${path} changed while it was checked`, 'EAGAIN');
  }
  return fd;
}

const fsError = (message: string, code: string) => Object.assign(new Error(message), { code });

/**
 * Refuses (CONFIG_INSECURE) a file other users may change, and, when it holds `secret` (a join
 * token, a private key), one they may read.
 */
export function checkRootFileMode(file: string, st: Stats, secret: string | null): void {
  if (!ownedByUs(st) || (st.mode & 0o022) !== 0) {
    throw new AgentVpnError('CONFIG_INSECURE', `${file} may be changed by other users (owner uid ${st.uid}, mode ${(st.mode & 0o777).toString(8)})`,
      `it decides what a root daemon does: \`chown root ${file} && chmod 600 ${file}\``);
  }
  if (secret !== null && (st.mode & 0o044) !== 0) {
    throw new AgentVpnError('CONFIG_INSECURE', `${file} holds ${secret} and other users may read it (mode ${(st.mode & 0o777).toString(8)})`,
      `\`chmod 600 ${file}\`${secret === 'a join token' ? ', or pass the token in AGENTVPN_TOKEN (e.g. the unit\'s EnvironmentFile)' : ''}`);
  }
}

/**
 * A root file's text and the stat of what was read (one open file). `secret(text)` names the
 * secret the text holds, if any: the file must then be unreadable by others too. fs errors are
 * thrown as they are, for the caller to word.
 */
export function readRootFile(file: string, secret: (text: string) => string | null = () => null): { text: string; st: Stats } {
  const fd = openRootFile(file);
  try {
    const st = fstatSync(fd);
    // Read to the size checked, no further: the file may grow, never past what was checked.
    const buf = Buffer.alloc(st.size);
    let got = 0;
    for (let n = 1; got < buf.length && n > 0; got += n) n = readSync(fd, buf, got, buf.length - got, got);
    const text = buf.subarray(0, got).toString('utf8');
    checkRootFileMode(file, st, secret(text));
    return { text, st };
  } finally {
    closeSync(fd);
  }
}
