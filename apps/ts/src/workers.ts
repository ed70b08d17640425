/**
 * The Cloudflare Workers pattern: a PrismaClient (and its pg Pool) per request, disconnected
 * after the response with `ctx.waitUntil(prisma.$disconnect())`. A Worker may not carry a
 * socket from one request into the next; PgBouncer absorbs the connection churn.
 *
 * One process holds at most POOL_CONNECTION_LIMIT connections at once: a request waits up to
 * SLOT_WAIT_MS for a slot (else 503), and gives it back only once its client is disconnected,
 * so PgBouncer's max_client_conn sizing (instances x connection_limit) stays true.
 */
import { closeClient, pooledClient, type PooledClient } from "./clients.js";
import { route, Unavailable, type Event, type Response } from "./routes.js";
import { loadSettings } from "./settings.js";

export const SLOT_WAIT_MS = 10_000;

/** What a Workers runtime hands the fetch handler: work that may outlive the response. */
export interface ExecutionContext {
  waitUntil(promise: Promise<unknown>): void;
}

class Slots {
  private free: number;
  private readonly waiting: Array<() => void> = [];

  constructor(size: number) {
    this.free = size;
  }

  acquire(timeoutMs: number): Promise<boolean> {
    if (this.free > 0) {
      this.free -= 1;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const grant = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.waiting.splice(this.waiting.indexOf(grant), 1);
        resolve(false);
      }, timeoutMs);
      this.waiting.push(grant);
    });
  }

  release(): void {
    const next = this.waiting.shift();
    if (next !== undefined) next();
    else this.free += 1;
  }
}

let slots: Slots | undefined;

export async function handler(
  event: Event,
  log: (line: string) => void,
  ctx: ExecutionContext,
): Promise<Response> {
  const settings = loadSettings();
  slots ??= new Slots(settings.connectionLimit);
  let client: PooledClient | undefined;
  try {
    return await route(event, async () => {
      if (!(await slots!.acquire(SLOT_WAIT_MS))) {
        throw new Unavailable(`no connection slot free within ${SLOT_WAIT_MS / 1000}s`);
      }
      client = pooledClient(settings, 1, 1_000, log);
      return client.prisma;
    }, log);
  } finally {
    if (client !== undefined) {
      const done = client;
      ctx.waitUntil(closeClient(done).finally(() => slots!.release()));
    }
  }
}

/** Nothing to release: no client outlives its request. */
export async function close(): Promise<void> {}
