/**
 * The schema, created once at startup over DIRECT_URL (the owner role, straight to Postgres).
 *
 * It runs prisma/migrations/0_init/migration.sql, the file `prisma migrate deploy` would apply,
 * with plain SQL: Prisma Migrate needs its schema engine, a binary download this machine cannot
 * make. A transaction-scoped advisory lock keeps replicas that start together from racing;
 * the table is created only when missing (the Python apps create the same one), and the pooled
 * role gets exactly the privileges the apps use.
 */
import { readFileSync } from "node:fs";

import pg from "pg";

import { CONNECT_TIMEOUT_MS } from "./clients.js";
import type { Settings } from "./settings.js";

const MIGRATION = new URL("../../prisma/migrations/0_init/migration.sql", import.meta.url);
const SCHEMA_LOCK = "poolkit-apps-schema";

export async function ensureSchema(settings: Settings): Promise<void> {
  const client = new pg.Client({
    connectionString: settings.directUrl ?? settings.pooledUrl,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
  });
  await client.connect();
  try {
    await client.query("BEGIN");
    await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [SCHEMA_LOCK]);
    const found = await client.query("SELECT to_regclass('items') IS NOT NULL AS present");
    if (!found.rows[0].present) await client.query(readFileSync(MIGRATION, "utf8"));
    const appUser = decodeURIComponent(new URL(settings.pooledUrl).username);
    const me = await client.query("SELECT current_user AS name");
    if (appUser && appUser !== me.rows[0].name) {
      const role = pg.escapeIdentifier(appUser);
      await client.query(`GRANT SELECT, INSERT ON items TO ${role}`);
      await client.query(`GRANT USAGE ON SEQUENCE items_id_seq TO ${role}`);
    }
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw err;
  } finally {
    await client.end();
  }
}
