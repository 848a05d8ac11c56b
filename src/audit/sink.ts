import type { JsonValue } from './entry.js';

/**
 * Where a part of the agent reports a security-relevant event (docs/audit.md lists the types).
 * Reporting never blocks the caller: the entry is written off the packet path, in batches, and a
 * caller that must not go on before it is durable awaits AuditLog.append itself.
 */
export type AuditSink = (type: string, subject: string, details?: { [key: string]: JsonValue }) => void;

/** For parts built without an audit log (tests, static mode before it has one). */
export const noAudit: AuditSink = () => {};
