/**
 * The HTTP surface both styles share, the same as the Python apps' (apps/__init__.py):
 * `GET /healthz`, `POST /items`, `GET /items`, with the same status codes and error bodies.
 * The styles differ only in where the PrismaClient comes from.
 */
import type { PrismaClient } from "./generated/prisma/client.js";
import { redact } from "./settings.js";

export interface Event {
  method: string;
  path: string;
  body: string | null;
}

export interface Response {
  status: number;
  body: Record<string, unknown>;
}

/** Raised when the app cannot get a database session in time (a 503, like the Python apps). */
export class Unavailable extends Error {}

export const MAX_NAME_LENGTH = 200;
export const ITEMS_PAGE = 50;

type Action = () => Promise<Response>;

/** Serve one event with `prisma()`'s client; database failures become a short 503/500. */
export async function route(
  event: Event,
  prisma: () => Promise<PrismaClient>,
  log: (line: string) => void,
): Promise<Response> {
  const method = event.method.toUpperCase();
  const routes: Record<string, Record<string, Action>> = {
    "/healthz": { GET: async () => healthz(await prisma()) },
    "/items": {
      GET: async () => listItems(await prisma()),
      POST: async () => createItem(event.body, prisma),
    },
  };
  const methods = routes[event.path];
  if (methods === undefined) return error(404, "not found");
  const action = methods[method];
  if (action === undefined) return error(405, `use ${Object.keys(methods).sort().join(" or ")}`);
  try {
    return await action();
  } catch (err) {
    if (isUnavailable(err)) {
      log(`WARNING ${method} ${event.path}: ${describeError(err)}`);
      return error(503, "database unavailable");
    }
    log(`ERROR ${method} ${event.path}: ${describeError(err)}`);
    return error(500, "database error");
  }
}

async function healthz(prisma: PrismaClient): Promise<Response> {
  const rows = await prisma.$queryRaw<{ one: number }[]>`SELECT 1::int AS one`;
  return { status: 200, body: { ok: true, db: rows[0]?.one } };
}

async function listItems(prisma: PrismaClient): Promise<Response> {
  const items = await prisma.item.findMany({ orderBy: { id: "desc" }, take: ITEMS_PAGE });
  return { status: 200, body: { items: items.map(itemJson) } };
}

async function createItem(
  raw: string | null,
  prisma: () => Promise<PrismaClient>,
): Promise<Response> {
  let body: unknown;
  try {
    body = JSON.parse(raw ?? "");
  } catch {
    return error(400, "body must be JSON");
  }
  const name =
    typeof body === "object" && body !== null && !Array.isArray(body)
      ? (body as Record<string, unknown>).name
      : undefined;
  if (typeof name !== "string" || name.trim() === "") {
    return error(400, 'body must be {"name": "<non-empty string>"}');
  }
  if ([...name].length > MAX_NAME_LENGTH || name.includes("\0")) {
    return error(400, `name must be at most ${MAX_NAME_LENGTH} characters, without NUL`);
  }
  const item = await (await prisma()).item.create({ data: { name } });
  return { status: 201, body: { item: itemJson(item) } };
}

function itemJson(item: { id: bigint; name: string; createdAt: Date }): Record<string, unknown> {
  return { id: Number(item.id), name: item.name, created_at: item.createdAt.toISOString() };
}

export function error(status: number, message: string): Response {
  return { status, body: { error: message } };
}

/** Error codes that mean "the database cannot be reached now", anywhere in `chain()`. */
const UNAVAILABLE_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EHOSTUNREACH",
  "P1001", "P1002", "P1017", "P2024", // Prisma: unreachable, timed out, closed, pool timeout
  "57P01", "57P02", "57P03", "53300", // admin shutdown, crash, cannot connect now, too many
  "28P01", "28000", // authentication failures (class 08 is matched as a whole below)
]);
const UNAVAILABLE_KINDS = new Set([
  "DatabaseNotReachable", "DatabaseAccessDenied", "AuthenticationFailed", "SocketTimeout",
  "ConnectionClosed", "TooManyConnections",
]);
const UNAVAILABLE_MESSAGE =
  /timeout exceeded when trying to connect|Connection terminated|connect ECONNREFUSED|Can't reach database|server closed the connection|password authentication failed/i;

export function isUnavailable(err: unknown): boolean {
  if (err instanceof Unavailable) return true;
  return chain(err).some((fields) => {
    for (const key of ["code", "originalCode", "kind"]) {
      const value = fields[key];
      if (typeof value !== "string") continue;
      // SQLSTATE class 08: connection exceptions (PgBouncer reports a failed login as 08P01).
      if (UNAVAILABLE_CODES.has(value) || UNAVAILABLE_KINDS.has(value) || /^08[0-9A-Z]{3}$/.test(value)) {
        return true;
      }
    }
    return typeof fields.message === "string" && UNAVAILABLE_MESSAGE.test(fields.message);
  });
}

/**
 * The error and what it wraps: `cause`, and Prisma's `meta.driverAdapterError` (where
 * @prisma/adapter-pg puts the pg error's SQLSTATE and message), outermost first.
 */
function chain(err: unknown): Array<Record<string, unknown>> {
  const found: Array<Record<string, unknown>> = [];
  const todo: unknown[] = [err];
  while (todo.length > 0) {
    const current = todo.shift();
    if (typeof current !== "object" || current === null || found.includes(current as never)) continue;
    const fields = current as Record<string, unknown>;
    found.push(fields);
    const meta = fields.meta as Record<string, unknown> | undefined;
    todo.push(fields.cause, meta?.driverAdapterError);
  }
  return found;
}

/**
 * One log-safe line: the error's class and code, and the innermost database message (the pg
 * error's SQLSTATE and text where Prisma wrapped one), redacted.
 */
export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return "non-error thrown";
  const code = (err as { code?: unknown }).code;
  const inner = chain(err).slice(1).reverse().find((f) => typeof f.message === "string");
  const text = typeof inner?.message === "string" ? inner.message : err.message;
  const sqlstate = typeof inner?.code === "string" ? ` ${inner.code}` : "";
  const firstLine = text.trim().split("\n").find((line) => line.trim() !== "") ?? "";
  const label = `${err.constructor.name}${typeof code === "string" ? ` [${code}]` : ""}`;
  return `${label}${sqlstate}: ${redact(firstLine)}`;
}
