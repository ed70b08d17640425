/** A PrismaClient on @prisma/adapter-pg over a pg Pool: the one construction both styles use. */
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";

import { PrismaClient } from "./generated/prisma/client.js";
import type { Settings } from "./settings.js";

/** How long a request may wait for PgBouncer to accept a connection: a fast 503, not a hang. */
export const CONNECT_TIMEOUT_MS = 5_000;

export interface PooledClient {
  prisma: PrismaClient;
  pool: pg.Pool;
}

/**
 * `max` connections to the pooled URL, kept idle for `idleMs` (0: for as long as the process
 * lives). The pool's `error` event (an idle connection dropped by PgBouncer) is logged; pg
 * removes that connection and the next query opens a fresh one.
 */
export function pooledClient(
  settings: Settings,
  max: number,
  idleMs: number,
  log: (line: string) => void,
): PooledClient {
  const pool = new pg.Pool({
    connectionString: settings.pooledUrl,
    max,
    idleTimeoutMillis: idleMs,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
  });
  pool.on("error", (err) => log(`WARNING idle connection lost (${err.constructor.name})`));
  const prisma = new PrismaClient({ adapter: new PrismaPg(pool) });
  return { prisma, pool };
}

/** `$disconnect()` then close the pool's sockets: nothing of the client stays open. */
export async function closeClient(client: PooledClient): Promise<void> {
  try {
    await client.prisma.$disconnect();
  } finally {
    await client.pool.end();
  }
}
