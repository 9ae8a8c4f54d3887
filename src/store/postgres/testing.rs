//! Fresh PostgreSQL databases for tests (the store's own and the black-box tests): each caller
//! gets a database of its own with a random name, dropped when its guard is dropped.
//!
//! The server comes from `TEST_DATABASE_URL` (default: the local server, user postgres, trust
//! auth). When it cannot be reached, `fresh_database_or_skip` skips the test with a message,
//! unless `CI` is set: there a missing database is a failure, not a skip.
//!
//! Not shipped: the library compiles this file for its own tests only, and the black-box tests
//! include the same file (`#[path]` in tests/it/support.rs). So it reaches the store only
//! through `super::{tls, pg_message, redact_url}`: the store's own module here, the library's
//! public ones there, and connects as the store does (`sslmode`, `sslrootcert`).

use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{pg_message, redact_url};

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server the tests use (`TEST_DATABASE_URL`, or the local default).
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_DATABASE_URL.to_string())
}

/// Drops its database when dropped (best effort; connections still open are ended).
#[derive(Debug)]
pub struct DatabaseGuard {
    server: String,
    name: String,
}

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs inside or outside a runtime: a thread with its own runtime works for both.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let (client, conn) = connect(&server).await.ok()?;
                let driver = tokio::spawn(conn);
                let r = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                drop(client);
                let _ = driver.await;
                r.ok()
            })
        })
        .join();
        if !matches!(done, Ok(Some(()))) {
            eprintln!("note: could not drop the test database {}", self.name);
        }
    }
}

/// Connects to `url` as the store would (its `sslmode` and `sslrootcert` included).
pub async fn connect(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, super::tls::Stream>,
    ),
    String,
> {
    let (mut config, tls) = super::tls::connect_options(url)
        .map_err(|e| format!("invalid TEST_DATABASE_URL {}: {e}", redact_url(url)))?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    config
        .connect(tls)
        .await
        .map_err(|e| format!("cannot connect to {}: {}", redact_url(url), pg_message(&e)))
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    // The path starts at the first '/' after the last '@' (a password may hold a '/').
    let host_start = head[authority_start..]
        .rfind('@')
        .map_or(authority_start, |i| authority_start + i + 1);
    let base = match head[host_start..].find('/') {
        Some(slash) => &head[..host_start + slash],
        None => head,
    };
    format!("{base}/{name}{query}")
}

/// Creates an empty database on the `TEST_DATABASE_URL` server; returns its URL and the guard
/// that drops it.
pub async fn fresh_database() -> Result<(String, DatabaseGuard), String> {
    fresh_database_on(&server_url()).await
}

/// Creates an empty database on the server `server` (a URL naming any database on it).
pub async fn fresh_database_on(server: &str) -> Result<(String, DatabaseGuard), String> {
    let server = server.to_string();
    let (client, conn) = connect(&server).await?;
    let driver = tokio::spawn(conn);
    let name = format!("er_test_{}", Uuid::new_v4().simple());
    let mut tries = 0;
    let created = loop {
        // CREATE DATABASE copies template1 and fails while another session is on it (another
        // test creating its own at the same instant): try again.
        match client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
        {
            Ok(()) => break Ok(()),
            Err(e) if tries < 20 && e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
            }
            Err(e) => break Err(format!("cannot create a test database: {}", pg_message(&e))),
        }
    };
    drop(client);
    let _ = driver.await;
    created?;
    Ok((
        with_database(&server, &name),
        DatabaseGuard { server, name },
    ))
}

/// A fresh database, or `None` when PostgreSQL is unreachable and `CI` is unset (the reason is
/// printed); under CI an unreachable server fails the test.
pub async fn fresh_database_or_skip() -> Option<(String, DatabaseGuard)> {
    match fresh_database().await {
        Ok(db) => Some(db),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping a PostgreSQL test: {e}");
            None
        }
        Err(e) => panic!("PostgreSQL is required under CI: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p/w@h/db?sslmode=disable", "x"),
            "postgresql://u:p/w@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db?x=1"),
            "postgres://u:***@h/db?x=1"
        );
        assert_eq!(
            redact_url("postgres://h/db?password=s3cret&sslmode=require"),
            "postgres://h/db?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://h/db?sslmode=require&password=s3cret"),
            "postgres://h/db?sslmode=require&password=***"
        );
        let kv = redact_url("host=h password=s3cret dbname=db");
        assert!(
            !kv.contains("s3cret") && kv.contains("password='***'"),
            "{kv}"
        );
    }
}
