import { PgStore, isPostgresUrl } from './pg-store.js';
import { SqliteStore } from './sqlite-store.js';
import type { RegistryStore } from './store.js';

/** The environment variable a database URL may come from instead of --db (a password there stays out of `ps`). */
export const REGISTRY_DB_ENV = 'AGENTVPN_REGISTRY_DB';

/** The store a --db value names: postgres://… (or postgresql://…) a PostgreSQL database, anything else a SQLite file (the default). */
export async function openStore(db: string): Promise<RegistryStore> {
  return isPostgresUrl(db) ? PgStore.open(db) : new SqliteStore(db);
}

/** The SQLite file a --db value names, or undefined for a database URL (nothing to put files beside). */
export function sqliteFileOf(db: string | undefined): string | undefined {
  return db !== undefined && !isPostgresUrl(db) ? db : undefined;
}
