import type { JsonValue } from './entry.js';

/**
 * Where a part of the agent reports a security-relevant event (docs/audit.md lists the types).
 * The entry is written off the packet path, in batches. The promise resolves once it is on disk
 * (or, with a failing disk, after a bounded wait: the entry stays queued) and never rejects, so
 * an action that must be logged before it takes effect awaits it, and any other caller ignores it.
 */
export type AuditSink = (type: string, subject: string, details?: { [key: string]: JsonValue }) => Promise<void>;

/** For parts built without an audit log (tests). */
export const noAudit: AuditSink = () => Promise.resolve();
