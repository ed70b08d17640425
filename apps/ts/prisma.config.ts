// Prisma 7 CLI configuration. Migrations go straight to Postgres as the owner role:
// DIRECT_URL from poolkit's .env, never the pooled URL (PgBouncer in transaction mode
// cannot hold the session a migration needs). The apps themselves read DATABASE_URL.
//
//   set -a; . ../../.env.dev; set +a
//   npx prisma migrate deploy
//
// `prisma generate` needs no database: the URL is only read by commands that connect.
import { defineConfig } from "prisma/config";

export default defineConfig({
  schema: "prisma/schema.prisma",
  migrations: { path: "prisma/migrations" },
  datasource: { url: process.env.DIRECT_URL ?? "" },
});
