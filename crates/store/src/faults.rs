//! Real SQLite failures on demand, for tests that prove what a failed write
//! or read leaves behind (only built with the `test-faults` feature).
//!
//! A fault is part of the database file, not of a connection: a trigger
//! that aborts every write to one table, or a table renamed away so every
//! read of it fails. So it reaches the daemon's own connections, on their
//! own threads, exactly like a real failure would, with nothing in the
//! production code paths knowing about it.

use crate::{Result, StoreError};
use rusqlite::Connection;
use std::path::Path;

fn with_connection<T>(db: &Path, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
    let wrap = |source| StoreError::Sqlite { path: db.to_owned(), source };
    let conn = Connection::open(db).map_err(wrap)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(wrap)?;
    conn.execute("ATTACH DATABASE ?1 AS ident", [crate::identity_path(db).to_string_lossy()]).map_err(wrap)?;
    f(&conn).map_err(wrap)
}

/// Every insert, update and delete of `table` (in `main`, or `ident.` for
/// the identity database) fails with `injected fault`, when `condition` (an
/// SQL expression over `NEW`, e.g. `NEW.stream = 'alerts'`) holds.
pub fn fail_writes(db: &Path, table: &str, condition: Option<&str>) -> Result<()> {
    let (schema, name) = table.split_once('.').unwrap_or(("main", table));
    let when = condition.map(|c| format!("WHEN {c}")).unwrap_or_default();
    with_connection(db, |conn| {
        for op in ["INSERT", "UPDATE"] {
            conn.execute_batch(&format!(
                "CREATE TRIGGER {schema}.fault_{name}_{op} BEFORE {op} ON {name} {when}
                 BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
            ))?;
        }
        // Deletes have no NEW row: the condition does not apply.
        conn.execute_batch(&format!(
            "CREATE TRIGGER {schema}.fault_{name}_DELETE BEFORE DELETE ON {name}
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
        ))
    })
}

/// Removes what [`fail_writes`] installed on `table`.
pub fn heal_writes(db: &Path, table: &str) -> Result<()> {
    let (schema, name) = table.split_once('.').unwrap_or(("main", table));
    with_connection(db, |conn| {
        for op in ["INSERT", "UPDATE", "DELETE"] {
            conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {schema}.fault_{name}_{op};"))?;
        }
        Ok(())
    })
}

/// Every read of `table` fails (the table is renamed away) until
/// [`heal_reads`].
pub fn fail_reads(db: &Path, table: &str) -> Result<()> {
    let (schema, name) = table.split_once('.').unwrap_or(("main", table));
    with_connection(db, |conn| conn.execute_batch(&format!("ALTER TABLE {schema}.{name} RENAME TO {name}_faulty;")))
}

pub fn heal_reads(db: &Path, table: &str) -> Result<()> {
    let (schema, name) = table.split_once('.').unwrap_or(("main", table));
    with_connection(db, |conn| conn.execute_batch(&format!("ALTER TABLE {schema}.{name}_faulty RENAME TO {name};")))
}

/// Writes raw text into the meta table (e.g. an unreadable mode schedule).
pub fn put_meta(db: &Path, key: &str, value: &str) -> Result<()> {
    with_connection(db, |conn| crate::local::meta_set(conn, key, value))
}

/// Rows per table, for "nothing half-written" checks: outbox, sequence,
/// pass_use, passback, pending_grant, meta.
pub fn row_counts(db: &Path) -> Result<Vec<(String, i64)>> {
    with_connection(db, |conn| {
        ["outbox", "sequence", "pass_use", "passback", "pending_grant", "meta"]
            .into_iter()
            .map(|t| Ok((t.to_owned(), conn.query_row(&format!("SELECT count(*) FROM main.{t}"), [], |r| r.get(0))?)))
            .collect()
    })
}
