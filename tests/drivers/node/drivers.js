// node-postgres and Prisma 7 (@prisma/adapter-pg) on their default settings, through poolkit's
// .env read the way Node reads it (node --env-file=.env.STACK drivers.js DRIVER):
//
//   pg-client  one pg.Client per worker, plain parameterised queries
//   pg-named   one pg.Client per worker, named (prepared) queries
//   pg-pool    one pg.Pool (default max 10) shared by the workers, pool.query
//   prisma     one PrismaClient over new PrismaPg({ connectionString: DATABASE_URL }):
//              $queryRaw with parameters, and a create + findUnique of the DriverItem model
//
// WORKERS workers run ROUNDS rounds each, concurrently; every result is compared with what the
// worker asked for. Prints one JSON line: {driver, queries, wrong, errors, first_problem}.
"use strict";

const pg = require("pg");

const WORKERS = Number(process.env.DRIVER_WORKERS || 20);
const ROUNDS = Number(process.env.DRIVER_ROUNDS || 12);
const ADD = "SELECT $1::int + 7 AS value, $2::text AS tag";
const DOUBLE = "SELECT $1::int * 2 AS value, $2::text AS tag";

function tally(driver) {
  const t = { driver, queries: 0, wrong: 0, errors: 0, first_problem: "" };
  t.check = (got, want) => {
    t.queries += 1;
    const same = JSON.stringify(got) === JSON.stringify(want);
    if (!same) {
      t.wrong += 1;
      t.first_problem ||= `got ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`;
    }
  };
  t.failed = (error) => {
    t.errors += 1;
    t.first_problem ||= `${error.name}: ${error.message}`;
  };
  return t;
}

function expected(worker, round) {
  const n = worker * 1000 + round;
  const tag = `w${worker}r${round}`;
  return { n, tag, add: [n + 7, tag], double: [n * 2, tag] };
}

const row = (result) => [result.rows[0].value, result.rows[0].tag];

async function rounds(t, worker, query) {
  for (let round = 0; round < ROUNDS; round += 1) {
    const e = expected(worker, round);
    try {
      t.check(row(await query("add", ADD, [e.n, e.tag])), e.add);
      t.check(row(await query("double", DOUBLE, [e.n, e.tag])), e.double);
    } catch (error) {
      t.failed(error);
    }
  }
}

async function withClients(t, named) {
  await Promise.all(Array.from({ length: WORKERS }, async (_, worker) => {
    const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
    try {
      await client.connect();
    } catch (error) {
      t.failed(error);
      return;
    }
    const query = named
      ? (name, text, values) => client.query({ name, text, values })
      : (_name, text, values) => client.query(text, values);
    try {
      await rounds(t, worker, query);
    } finally {
      await client.end().catch(() => {});
    }
  }));
  return t;
}

async function withPool(t) {
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
  try {
    await Promise.all(Array.from({ length: WORKERS }, (_, worker) =>
      rounds(t, worker, (_name, text, values) => pool.query(text, values))));
  } finally {
    await pool.end();
  }
  return t;
}

async function withPrisma(t) {
  const { PrismaClient } = require("@prisma/client");
  const { PrismaPg } = require("@prisma/adapter-pg");
  const adapter = new PrismaPg({ connectionString: process.env.DATABASE_URL });
  const prisma = new PrismaClient({ adapter });
  try {
    await Promise.all(Array.from({ length: WORKERS }, async (_, worker) => {
      for (let round = 0; round < ROUNDS; round += 1) {
        const e = expected(worker, round);
        try {
          const [add] = await prisma.$queryRaw`SELECT ${e.n}::int + 7 AS value, ${e.tag}::text AS tag`;
          t.check([add.value, add.tag], e.add);
          const [dbl] = await prisma.$queryRaw`SELECT ${e.n}::int * 2 AS value, ${e.tag}::text AS tag`;
          t.check([dbl.value, dbl.tag], e.double);
          const made = await prisma.driverItem.create({ data: { worker, round, tag: e.tag } });
          const found = await prisma.driverItem.findUnique({ where: { id: made.id } });
          t.check([found.worker, found.round, found.tag], [worker, round, e.tag]);
        } catch (error) {
          t.failed(error);
        }
      }
    }));
  } finally {
    await prisma.$disconnect();
  }
  return t;
}

const DRIVERS = {
  "pg-client": (t) => withClients(t, false),
  "pg-named": (t) => withClients(t, true),
  "pg-pool": withPool,
  prisma: withPrisma,
};

async function main() {
  const driver = process.argv[2];
  if (!DRIVERS[driver]) {
    console.error(`usage: node --env-file=.env drivers.js ${Object.keys(DRIVERS).join("|")}`);
    process.exit(2);
  }
  if (!process.env.DATABASE_URL) {
    console.error("DATABASE_URL is not set: pass --env-file=<poolkit .env>");
    process.exit(2);
  }
  const t = await DRIVERS[driver](tally(driver));
  const { check, failed, ...figures } = t;
  console.log(JSON.stringify(figures));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
