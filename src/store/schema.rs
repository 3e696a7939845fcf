//! Connection settings, schema migrations and the secrets key check.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::{EnvCipher, StoreError};

/// Schema version this build writes, kept in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// Migrations in order: entry `n` moves the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1. Ids and times are integers (job ids and epoch milliseconds), and JSON columns
    // contain serde output. `name_key` is the trimmed, lowercased name, which makes names unique
    // case-insensitively, as agentIDs are. `jobs_by_integration` lets the metrics count jobs
    // from the index alone.
    "CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE integrations (
        agent_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        name_key TEXT NOT NULL UNIQUE,
        manifest TEXT NOT NULL,
        digest TEXT NOT NULL,
        package_root TEXT NOT NULL,
        state TEXT NOT NULL,
        build_error TEXT,
        prepared TEXT,
        env BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        health_checked_ms INTEGER,
        health_healthy INTEGER,
        health_report TEXT
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        integration TEXT NOT NULL,
        state TEXT NOT NULL,
        input_values TEXT NOT NULL,
        context TEXT NOT NULL,
        result TEXT,
        error TEXT,
        exit_code INTEGER,
        stderr_tail TEXT,
        submitted_ms INTEGER NOT NULL,
        started_ms INTEGER,
        finished_ms INTEGER
    );
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE INDEX jobs_by_agent ON jobs (agent_id, state, id);
    CREATE INDEX jobs_by_integration ON jobs (integration, state);",
];

/// Sets WAL mode, full synchronisation and a busy timeout.
pub(super) fn configure(connection: &Connection) -> Result<(), rusqlite::Error> {
    // `journal_mode` returns the mode as a row, so it is read rather than executed.
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "the database did not switch to WAL mode");
    }
    connection.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(())
}

/// Applies the migrations the file has not seen yet, each in its own transaction.
pub(super) fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(open_error)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let transaction = connection.transaction().map_err(open_error)?;
        transaction.execute_batch(migration).map_err(open_error)?;
        transaction
            .pragma_update(None, "user_version", index as i64 + 1)
            .map_err(open_error)?;
        transaction.commit().map_err(open_error)?;
        tracing::info!(
            database = %path.display(),
            schema_version = index + 1,
            "database schema migrated"
        );
    }
    Ok(())
}

/// Stores a key check value on first use, and compares the key with it afterwards.
pub(super) fn check_key(
    connection: &Connection,
    cipher: &EnvCipher,
    path: &Path,
) -> Result<(), StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let stored: Option<Vec<u8>> = connection
        .query_row(
            "SELECT value FROM meta WHERE key = 'key_check'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(open_error)?;
    match stored {
        Some(check) if cipher.check_key(&check) => Ok(()),
        Some(_) => Err(StoreError::WrongKey {
            path: path.to_owned(),
        }),
        None => {
            connection
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                    [cipher.key_check()],
                )
                .map_err(open_error)?;
            Ok(())
        }
    }
}
