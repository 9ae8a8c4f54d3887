//! The schema: its migrations (`migrations/*.sql`, applied in order at start) and how every
//! connection to the file is opened.

use std::path::Path;

use rusqlite::Connection;

/// Schema migrations, applied in order at start; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_first_attempt.sql"),
    include_str!("migrations/0003_unfinished_index.sql"),
    include_str!("migrations/0004_erasure.sql"),
    include_str!("migrations/0005_ordering.sql"),
    include_str!("migrations/0006_trace_context.sql"),
    include_str!("migrations/0007_attempt_detail.sql"),
    include_str!("migrations/0008_leases.sql"),
];

pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL: readers never block the writer. synchronous=FULL: a commit is on disk before the
    // webhook is answered (NORMAL could lose the last commits on power loss). secure_delete:
    // content that is deleted or overwritten (an erased event, a purged one) is zeroed in the
    // file rather than left in free space; the writer rewrites those pages anyway, so it costs
    // a memset, and the extra writes of freed overflow pages happen only in purges.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 10000;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;",
    )?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
