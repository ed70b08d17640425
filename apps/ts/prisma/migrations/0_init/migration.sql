-- The items table, as `prisma migrate deploy` applies it and as the apps' --migrate runs it
-- over DIRECT_URL when the table is missing (this machine has no schema engine).
CREATE TABLE "items" (
    "id" BIGSERIAL NOT NULL,
    "name" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "items_pkey" PRIMARY KEY ("id")
);
