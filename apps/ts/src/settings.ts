/**
 * Settings from poolkit's `.env`, read the way Prisma 7 with @prisma/adapter-pg expects them.
 *
 * - `DATABASE_URL`: the pooled URL (PgBouncer). node-postgres reads it; Prisma 7's adapter
 *   ignores Prisma <= 6 engine parameters, so `pgbouncer=`, `connection_limit=` and
 *   `pool_timeout=` are refused here with a hint rather than silently ignored.
 * - `POOL_CONNECTION_LIMIT`: the pg `Pool` `max` of one instance.
 * - `PGBOUNCER_PREPARED_STATEMENTS`: `on` from PgBouncer 1.21; node-postgres prepares only
 *   named queries, which these apps never send, so either value works (it is logged).
 * - `DIRECT_URL` (optional): Postgres itself as the owner role; only `--migrate` uses it.
 */

export class SettingsError extends Error {}

export interface Settings {
  pooledUrl: string;
  connectionLimit: number;
  preparedStatements: boolean;
  directUrl: string | undefined;
}

const ENGINE_ONLY_PARAMS = ["connection_limit", "pgbouncer", "pool_timeout"];

export function loadSettings(env: NodeJS.ProcessEnv = process.env): Settings {
  const pooledUrl = required(env, "DATABASE_URL");
  const params = new URL(checkedUrl(pooledUrl, "DATABASE_URL")).searchParams;
  const engineOnly = ENGINE_ONLY_PARAMS.filter((key) => params.has(key));
  if (engineOnly.length > 0) {
    throw new SettingsError(
      `DATABASE_URL carries Prisma <= 6 engine parameters (${engineOnly.join(", ")}), which ` +
        "@prisma/adapter-pg ignores: use the libpq-clean pooled URL and POOL_CONNECTION_LIMIT",
    );
  }
  const directUrl = env.DIRECT_URL?.trim() || undefined;
  if (directUrl !== undefined) checkedUrl(directUrl, "DIRECT_URL");
  const rawLimit = required(env, "POOL_CONNECTION_LIMIT");
  if (!/^[0-9]+$/.test(rawLimit) || Number(rawLimit) < 1) {
    throw new SettingsError(`POOL_CONNECTION_LIMIT='${rawLimit}': use a whole number >= 1`);
  }
  const prepared = required(env, "PGBOUNCER_PREPARED_STATEMENTS").toLowerCase();
  if (prepared !== "on" && prepared !== "off") {
    throw new SettingsError(`PGBOUNCER_PREPARED_STATEMENTS='${prepared}': use on or off`);
  }
  return {
    pooledUrl,
    connectionLimit: Number(rawLimit),
    preparedStatements: prepared === "on",
    directUrl,
  };
}

function required(env: NodeJS.ProcessEnv, name: string): string {
  const value = env[name]?.trim();
  if (!value) {
    throw new SettingsError(`${name} is not set: take it from the .env file poolkit generated`);
  }
  return value;
}

function checkedUrl(url: string, name: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new SettingsError(`${name} is not a valid postgresql:// URL`);
  }
  if (parsed.protocol !== "postgresql:" && parsed.protocol !== "postgres:") {
    throw new SettingsError(`${name} must start with postgresql:// (got ${parsed.protocol}//)`);
  }
  try {
    decodeURIComponent(parsed.username);
    decodeURIComponent(parsed.password);
  } catch {
    throw new SettingsError(`${name} is not a valid postgresql:// URL: bad percent-encoding`);
  }
  return url;
}

/** Every password in the database URLs, raw and percent-decoded: what logs must never hold. */
export function secretsOf(env: NodeJS.ProcessEnv = process.env): string[] {
  const found: string[] = [];
  for (const name of ["DATABASE_URL", "POOLED_DATABASE_URL", "DIRECT_URL"]) {
    try {
      const password = new URL(env[name] ?? "").password;
      if (password) found.push(password);
      if (password) found.push(decodeURIComponent(password));
    } catch {
      // not a URL: nothing to redact
    }
  }
  return found.filter((s) => s.length > 0);
}

/** `text` without passwords: those of the environment's URLs and any `user:pass@` part. */
export function redact(text: string, env: NodeJS.ProcessEnv = process.env): string {
  let clean = text;
  for (const secret of secretsOf(env)) clean = clean.split(secret).join("***");
  return clean.replace(/(:\/\/[^:/?#@\s]*:)[^@\s]*@/g, "$1***@");
}
