import type { Fleet } from '../fleet-state.js';
import { sendJson } from '../http-body.js';
import { parseReportedPaths, pathReportMessage, type PathReportBody, type ReportedPath } from '../path-report.js';
import { verifyAgentSignature } from '../protocol.js';
import { refuse } from '../refusals.js';
import { checkClock } from '../request-auth.js';
import type { RouteCall } from '../route-table.js';
import type { SignatureBudget } from '../signature-budget.js';
import type { RegistryStore } from '../store.js';

/**
 * PUT /v1/agents/ID/paths (the wire is in path-report.ts): an agent's paths to its peers, kept in
 * memory only for the console. Checks, cheapest first: the ID is a member of the network; it
 * had no report accepted in the last MIN_INTERVAL_MS (a member cannot make us verify and write
 * more than that, and a stranger's made-up reports never count against the member: a report
 * too soon is answered {kept: false} unread); the failed-signature budget (a malformed body spends
 * it too); the body's size and shape; the signature; the timestamp, taken once.
 * Memory: at most MAX_REPORTED_PATHS per agent and MAX_KEPT_PATHS in all; reports of agents
 * that are no longer members are forgotten.
 */

/** Agents report on change and every minute; one report per 2 s leaves room for quick changes. */
const MIN_INTERVAL_MS = 2_000;
/** ~180 bytes each in memory: ~36 MB at most, whatever the fleet does. */
const MAX_KEPT_PATHS = 200_000;

export interface PathReport {
  at: number;
  paths: ReportedPath[];
}

export interface PathReportContext {
  store: RegistryStore;
  fleet: Fleet;
  signatures: SignatureBudget;
  defaultNetwork: string;
}

export class PathReports {
  private readonly byNetwork = new Map<string, Map<string, PathReport>>();
  private keptPaths = 0;
  /** Reports kept, refused (bad or unsigned), not kept for coming too soon, or for memory being full. */
  readonly counts = { accepted: 0, refused: 0, tooSoon: 0, full: 0 };

  constructor(private readonly ctx: PathReportContext) {}

  /** The network's reports of agents that are still members. */
  of(network: string): Map<string, PathReport> {
    const reports = this.byNetwork.get(network) ?? new Map<string, PathReport>();
    for (const [id, r] of reports) {
      if (this.ctx.fleet.isMember(network, id)) continue;
      reports.delete(id);
      this.keptPaths -= r.paths.length;
    }
    return reports;
  }

  private put(network: string, id: string, report: PathReport): boolean {
    let reports = this.byNetwork.get(network);
    const old = reports?.get(id);
    const grows = report.paths.length - (old?.paths.length ?? 0);
    if (grows > 0 && this.keptPaths + grows > MAX_KEPT_PATHS) {
      // Reclaim what removed agents held, once, before saying no.
      for (const n of this.byNetwork.keys()) this.of(n);
      if (this.keptPaths + grows > MAX_KEPT_PATHS) return false;
    }
    if (!reports) this.byNetwork.set(network, (reports = new Map()));
    reports.set(id, report);
    this.keptPaths += grows;
    return true;
  }

  /** Answers {ok, kept}: not kept (too soon after the last one, or memory full) is no error, the agent sends again later. */
  async route(c: RouteCall, network: string): Promise<void> {
    const { req, res } = c;
    let kept: boolean;
    try {
      kept = await this.accept(c, network);
    } catch (e) {
      this.counts.refused++;
      throw e;
    }
    if (kept) this.counts.accepted++;
    // A body we did not read (a report too soon) is not drained: close the connection after answering.
    if (!req.complete) res.setHeader('connection', 'close');
    sendJson(res, 200, { ok: true, kept });
  }

  /** `c` passed its route's schemas (console/routes.ts): the ID, the network and the body's shape are valid. */
  private async accept(c: RouteCall, network: string): Promise<boolean> {
    const { fleet, signatures } = this.ctx;
    const { req, now } = c;
    const id = c.params.id;
    if (!fleet.isMember(network, id)) refuse('NOT_JOINED', `agent ${id} has not joined network ${network}`);
    const last = this.byNetwork.get(network)?.get(id);
    if (last && now - last.at < MIN_INTERVAL_MS && now >= last.at) {
      this.counts.tooSoon++;
      return false;
    }
    // Reading and checking up to 64 KiB and 256 IDs costs about a signature check: a body that
    // turns out malformed spends the same budget as a bad signature, checked before it is read.
    signatures.check(req);
    let body: PathReportBody;
    let parsed: { ok: true; paths: ReportedPath[] } | { ok: false; reason: string };
    try {
      body = await c.body<PathReportBody>();
      parsed = parseReportedPaths(body.paths);
    } catch (e) {
      signatures.failed(req);
      throw e;
    }
    const { timestamp } = body;
    if (!parsed.ok) {
      signatures.failed(req);
      refuse('BAD_REQUEST', `invalid path report: ${parsed.reason}`);
    }
    checkClock(timestamp, now);
    if (!verifyAgentSignature(id, pathReportMessage(network, id, timestamp, parsed.paths), body.signature, fleet.currentKey(id))) {
      signatures.failed(req);
      refuse('BAD_SIGNATURE', "the path report does not verify with the agent's current key");
    }
    const used = await this.ctx.store.useTimestamp(id, timestamp, now);
    if (!used.ok) refuse(used.code, used.message);
    // Removed while its timestamp was being taken: nothing of it is kept.
    if (!fleet.isMember(network, id)) refuse('NOT_JOINED', `agent ${id} was removed from network ${network}`);
    if (this.put(network, id, { at: now, paths: parsed.paths })) return true;
    this.counts.full++;
    return false;
  }
}
