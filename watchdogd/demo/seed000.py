"""Seed 000's product-import deploy: the schema before, the migration, the rollback the DBA signed off.

The demo deploys it and the tests roll it back; ``snapshot`` reads what a
schema comparison needs (columns, tables, types, enums, indexes, constraints,
the products' rows) from information_schema and pg_catalog.
"""

from __future__ import annotations

from typing import Any

import asyncpg

BASE_SCHEMA = """
CREATE TABLE "companies" ("id" TEXT PRIMARY KEY, "name" TEXT NOT NULL);
CREATE TABLE "products" (
    "id" TEXT PRIMARY KEY,
    "companyId" TEXT NOT NULL REFERENCES "companies"("id") ON DELETE CASCADE,
    "name" TEXT NOT NULL,
    "sku" TEXT,
    "price" DECIMAL(10, 2) NOT NULL DEFAULT 0
);
CREATE INDEX "products_companyId_idx" ON "products"("companyId");
INSERT INTO "companies" VALUES ('c1', 'Acme');
INSERT INTO "products" ("id", "companyId", "name", "sku", "price")
VALUES ('p1', 'c1', 'Widget', 'W-1', 9.99), ('p2', 'c1', 'Gadget', 'G-1', 19.99);
"""

# The product-import migration as the seed's DBA review describes it: 4 tables,
# 2 enums, 4 new products columns, 10 indexes, every foreign key cascading.
UP_MIGRATION = """
CREATE TYPE "ImportJobStatus" AS ENUM ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELLED');
CREATE TYPE "ImportJobPhase" AS ENUM ('QUEUED', 'FETCHING', 'MAPPING', 'CREATING', 'IMAGES', 'DONE');
ALTER TABLE "products" ADD COLUMN "importSource" TEXT,
    ADD COLUMN "externalId" TEXT,
    ADD COLUMN "externalSku" TEXT,
    ADD COLUMN "lastSyncedAt" TIMESTAMP(3);
CREATE TABLE "product_import_jobs" (
    "id" TEXT NOT NULL,
    "companyId" TEXT NOT NULL,
    "provider" TEXT NOT NULL,
    "status" "ImportJobStatus" NOT NULL DEFAULT 'PENDING',
    "phase" "ImportJobPhase" NOT NULL DEFAULT 'QUEUED',
    "totalItems" INTEGER NOT NULL DEFAULT 0,
    "processedItems" INTEGER NOT NULL DEFAULT 0,
    "errorLog" JSONB,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "product_import_jobs_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "product_import_jobs_companyId_fkey" FOREIGN KEY ("companyId")
        REFERENCES "companies"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE TABLE "product_images" (
    "id" TEXT NOT NULL,
    "companyId" TEXT NOT NULL,
    "productId" TEXT NOT NULL,
    "url" TEXT NOT NULL,
    "sizeBytes" INTEGER NOT NULL DEFAULT 0,
    "position" INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT "product_images_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "product_images_productId_fkey" FOREIGN KEY ("productId")
        REFERENCES "products"("id") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "product_images_companyId_fkey" FOREIGN KEY ("companyId")
        REFERENCES "companies"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE TABLE "storage_usage" (
    "id" TEXT NOT NULL,
    "companyId" TEXT NOT NULL,
    "bytesUsed" BIGINT NOT NULL DEFAULT 0,
    "imageCount" INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT "storage_usage_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "storage_usage_companyId_fkey" FOREIGN KEY ("companyId")
        REFERENCES "companies"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE TABLE "field_mapping_profiles" (
    "id" TEXT NOT NULL,
    "companyId" TEXT NOT NULL,
    "provider" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "mappings" JSONB NOT NULL,
    CONSTRAINT "field_mapping_profiles_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "field_mapping_profiles_companyId_fkey" FOREIGN KEY ("companyId")
        REFERENCES "companies"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX "product_import_jobs_companyId_status_idx" ON "product_import_jobs"("companyId", "status");
CREATE INDEX "product_import_jobs_companyId_createdAt_idx" ON "product_import_jobs"("companyId", "createdAt");
CREATE INDEX "product_images_companyId_idx" ON "product_images"("companyId");
CREATE INDEX "product_images_productId_idx" ON "product_images"("productId");
CREATE UNIQUE INDEX "storage_usage_companyId_key" ON "storage_usage"("companyId");
CREATE INDEX "field_mapping_profiles_companyId_idx" ON "field_mapping_profiles"("companyId");
CREATE UNIQUE INDEX "field_mapping_profiles_companyId_provider_name_key"
    ON "field_mapping_profiles"("companyId", "provider", "name");
CREATE UNIQUE INDEX "products_companyId_externalId_importSource_key"
    ON "products"("companyId", "externalId", "importSource");
CREATE INDEX "products_companyId_importSource_idx" ON "products"("companyId", "importSource");
CREATE INDEX "products_lastSyncedAt_idx" ON "products"("lastSyncedAt");
INSERT INTO "product_import_jobs" ("id", "companyId", "provider") VALUES ('j1', 'c1', 'shopify');
UPDATE "products" SET "importSource" = 'shopify', "externalId" = 'ext-1' WHERE "id" = 'p1';
"""

# The seed's rollback plan, verbatim.
SEED_ROLLBACK = """-- Rollback commands if needed (in reverse order):
DROP TABLE IF EXISTS "field_mapping_profiles" CASCADE;
DROP TABLE IF EXISTS "storage_usage" CASCADE;
DROP TABLE IF EXISTS "product_images" CASCADE;
DROP TABLE IF EXISTS "product_import_jobs" CASCADE;
ALTER TABLE "products" DROP COLUMN IF EXISTS "importSource";
ALTER TABLE "products" DROP COLUMN IF EXISTS "externalId";
ALTER TABLE "products" DROP COLUMN IF EXISTS "externalSku";
ALTER TABLE "products" DROP COLUMN IF EXISTS "lastSyncedAt";
DROP TYPE IF EXISTS "ImportJobPhase";
DROP TYPE IF EXISTS "ImportJobStatus";
"""
SEED_VERIFY = (
    "SELECT count(*) = 0 FROM information_schema.tables WHERE table_name = 'product_images'",
    "SELECT NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'ImportJobStatus')",
)
MIGRATION_ID = "20251227_add_product_import_system"

SNAPSHOT_QUERIES = {
    "columns": """SELECT table_name, column_name, ordinal_position, data_type, udt_name, is_nullable,
        column_default, numeric_precision, numeric_scale
        FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 3""",
    "tables": "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' "
    "ORDER BY 1",
    "types": """SELECT t.typname, t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' ORDER BY 1""",
    "enums": """SELECT t.typname, e.enumlabel, e.enumsortorder FROM pg_enum e
        JOIN pg_type t ON t.oid = e.enumtypid ORDER BY 1, 3""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 2",
    "constraints": """SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' ORDER BY 1, 2""",
    "data": """SELECT to_jsonb(p) FROM products p ORDER BY id""",
}


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(r) for r in await conn.fetch(q)] for name, q in SNAPSHOT_QUERIES.items()}
