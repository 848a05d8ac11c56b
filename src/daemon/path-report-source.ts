import type { Admission } from './admission.js';
import type { Daemon } from './daemon.js';
import { MAX_REPORTED_PATHS, parseReportedPaths, type ReportedPath } from '../registry/path-report.js';

/**
 * Our paths to the admitted peers, as the registry's console shows them (path-report.ts): the
 * path each peer's packets take now and its RTT, sorted by peer ID (so an unchanged set of paths
 * reads the same), at most MAX_REPORTED_PATHS. A path the registry would refuse (an RTT past its
 * bound, an odd relay name) is left out rather than costing the whole report.
 */
export function reportedPaths(daemon: Daemon, admission: Admission): ReportedPath[] {
  const paths: ReportedPath[] = [];
  for (const p of daemon.status().peers) {
    const peer = admission.idOfWgKey(p.publicKey);
    if (!peer || !p.path) continue;
    const checked = parseReportedPaths([{ peer, kind: p.path.kind, endpoint: p.path.endpoint, rttMs: p.path.rttMs }]);
    if (checked.ok) paths.push(checked.paths[0]);
  }
  paths.sort((a, b) => (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0));
  return paths.slice(0, MAX_REPORTED_PATHS);
}
