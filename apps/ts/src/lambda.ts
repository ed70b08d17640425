/**
 * The AWS Lambda pattern (Prisma's serverless guide): one PrismaClient created outside the
 * handler and reused while the instance is warm. Its pg Pool holds at most
 * POOL_CONNECTION_LIMIT connections and keeps them idle between invocations, so a warm
 * invocation skips TCP, SCRAM and startup; PgBouncer shares a few server connections among
 * these idle clients. No `$disconnect()` per request: that would throw the warm connection away.
 */
import { closeClient, pooledClient, type PooledClient } from "./clients.js";
import { route, type Event, type Response } from "./routes.js";
import { loadSettings } from "./settings.js";

/** Module scope, outside the handler: survives between invocations of a warm instance. */
let warm: PooledClient | undefined;

export function handler(event: Event, log: (line: string) => void): Promise<Response> {
  return route(event, async () => {
    if (warm === undefined) {
      const settings = loadSettings();
      warm = pooledClient(settings, settings.connectionLimit, 0, log);
    }
    return warm.prisma;
  }, log);
}

/** Instance shutdown: release the kept connections (the HTTP adapter calls it on SIGTERM). */
export async function close(): Promise<void> {
  if (warm !== undefined) {
    const client = warm;
    warm = undefined;
    await closeClient(client);
  }
}
