/**
 * A small node:http adapter that turns requests into handler events, as a platform's front
 * door would (the TypeScript twin of apps/http_adapter.py).
 *
 *   node dist/src/server.js --style lambda|workers [--host 127.0.0.1] [--port 8080] [--migrate]
 *
 * JSON in and out; one log line per request (method, path, status, time), never headers,
 * bodies or URLs. For the Workers style it plays the runtime's `ctx.waitUntil`: the response
 * is sent first, then the request's `prisma.$disconnect()` finishes. SIGTERM stops accepting,
 * lets in-flight requests and pending waitUntil work finish, closes the app's client, exits 0.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { parseArgs } from "node:util";

import * as lambda from "./lambda.js";
import { ensureSchema } from "./migrate.js";
import { describeError, error, type Event, type Response } from "./routes.js";
import { loadSettings, redact, SettingsError } from "./settings.js";
import * as workers from "./workers.js";

const MAX_BODY_BYTES = 64 * 1024;
const STYLES = ["lambda", "workers"] as const;
type Style = (typeof STYLES)[number];

function log(line: string): void {
  const [level, ...rest] = /^(INFO|WARNING|ERROR) /.test(line) ? line.split(" ") : ["INFO", line];
  process.stderr.write(`${new Date().toISOString()} ${level} apps.ts ${redact(rest.join(" "))}\n`);
}

async function readBody(req: IncomingMessage): Promise<Buffer | Response> {
  const declared = req.headers["content-length"];
  if (declared !== undefined && !/^[0-9]+$/.test(declared)) return error(400, "bad Content-Length");
  if (Number(declared ?? 0) > MAX_BODY_BYTES) return error(413, `body over ${MAX_BODY_BYTES} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return error(413, `body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function respond(
  style: Style,
  req: IncomingMessage,
  pending: Set<Promise<unknown>>,
): Promise<Response> {
  const body = await readBody(req);
  if (!Buffer.isBuffer(body)) return body;
  let text: string | null = null;
  if (body.length > 0) {
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(body);
    } catch {
      return error(400, "body must be UTF-8 JSON");
    }
  }
  const path = new URL(req.url ?? "/", "http://app.invalid").pathname;
  const event: Event = { method: req.method ?? "GET", path, body: text };
  const ctx: workers.ExecutionContext = {
    waitUntil(work) {
      const tracked = work.catch((err) => log(`WARNING waitUntil: ${describeError(err)}`));
      pending.add(tracked);
      void tracked.finally(() => pending.delete(tracked));
    },
  };
  try {
    return style === "lambda" ? await lambda.handler(event, log) : await workers.handler(event, log, ctx);
  } catch (err) {
    log(`ERROR ${event.method} ${path}: unhandled ${describeError(err)}`);
    return error(500, "internal error");
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      style: { type: "string" },
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "8080" },
      migrate: { type: "boolean", default: process.env.APP_MIGRATE === "1" },
    },
  });
  const style = values.style as Style;
  if (!STYLES.includes(style)) {
    log(`ERROR --style must be lambda or workers (got '${values.style ?? ""}')`);
    return 2;
  }
  let settings;
  try {
    settings = loadSettings();
    if (values.migrate) {
      await ensureSchema(settings);
      log(`schema ready (over ${settings.directUrl ? "DIRECT_URL" : "DATABASE_URL"})`);
    }
  } catch (err) {
    if (err instanceof SettingsError) {
      log(`ERROR ${err.message}`);
      return 2;
    }
    log(`ERROR migration failed: ${describeError(err)}`);
    return 1;
  }

  const pending = new Set<Promise<unknown>>();
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const started = performance.now();
    void respond(style, req, pending).then((response) => {
      const payload = JSON.stringify(response.body);
      res.writeHead(response.status, {
        "Content-Type": "application/json",
        "Content-Length": Buffer.byteLength(payload),
      });
      res.end(payload);
      const path = new URL(req.url ?? "/", "http://app.invalid").pathname;
      const ms = (performance.now() - started).toFixed(1);
      log(`${req.method} ${path} ${response.status} ${ms}ms`);
    });
  });
  server.keepAliveTimeout = 5_000;
  server.listen(Number(values.port), values.host);
  await new Promise<void>((resolve) => server.once("listening", resolve));
  log(`serving the ${style} style (Prisma 7 + adapter-pg) on ${values.host}:${values.port} ` +
      `(connection limit ${settings.connectionLimit}, prepared statements ` +
      `${settings.preparedStatements ? "on" : "off"})`);

  const signal = await new Promise<string>((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  log(`${signal}: shutting down`);
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  await closed;
  await Promise.allSettled([...pending]);
  await (style === "lambda" ? lambda.close() : workers.close());
  log("stopped");
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    log(`ERROR ${describeError(err)}`);
    process.exit(1);
  },
);
