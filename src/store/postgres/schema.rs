//! The schema: its migrations (`migrations/*.sql`), applied at start by one node at a time.

use deadpool_postgres::Pool;

use crate::store::{Result, StoreError};

/// Schema migrations, applied in order at start; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_first_attempt.sql"),
    include_str!("migrations/0003_erasure.sql"),
    include_str!("migrations/0004_shared_sessions_and_rate_leases.sql"),
    include_str!("migrations/0005_ordering.sql"),
    include_str!("migrations/0006_trace_context.sql"),
    include_str!("migrations/0007_attempt_detail.sql"),
    include_str!("migrations/0008_leases.sql"),
    include_str!("migrations/0009_bodies_in_row.sql"),
];

/// The advisory lock key under which nodes starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6576_656e_7472_7472; // "eventrtr"

/// Applies the migrations not yet applied, in one transaction holding an advisory lock, so that
/// nodes starting together neither race nor see a half-migrated schema.
pub(super) async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        .await?;
    let version: i64 = match tx
        .query_opt("SELECT version::bigint FROM schema_version", &[])
        .await?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Database(format!(
            "the database schema is version {version}, newer than this build knows ({known}): \
             upgrade event-router"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "UPDATE schema_version SET version = $1",
            &[&((i + 1) as i32)],
        )
        .await?;
        tracing::info!(version = i + 1, "applied a PostgreSQL migration");
    }
    tx.commit().await?;
    Ok(())
}
