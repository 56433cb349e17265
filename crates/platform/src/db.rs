//! PostgreSQL: the connection pool and the versioned migrations. Every
//! replica runs `migrate` at start; an advisory lock makes concurrent starts
//! apply each migration exactly once.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::config::PostgresConfig;

/// The migrations, in order. A deployed migration is never edited: changes
/// come as a new entry. `version` is the position (1-based).
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "initial tables: events, alerts, gaps, gates, sequence bookkeeping",
        include_str!("../migrations/0001_initial.sql"),
    ),
    ("flow views for the grid workers", include_str!("../migrations/0002_flows.sql")),
    ("alert routing: the durable delivery queue", include_str!("../migrations/0003_routes.sql")),
    ("signed downlink: counters, identity table, site state", include_str!("../migrations/0004_downlink.sql")),
    ("seq bookkeeping off the write path: the progress inbox", include_str!("../migrations/0005_progress_inbox.sql")),
    ("the newest event time kept with the seq progress", include_str!("../migrations/0006_stream_last_event.sql")),
];

/// Key of the advisory lock held while migrating (any constant the other
/// users of the database do not use: "gateplat" in ASCII).
const MIGRATION_LOCK: i64 = 0x6761_7465_706c_6174;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("the database has schema version {found}, newer than this program's {known}: upgrade gate-platform")]
    TooNew { found: i32, known: i32 },
    #[error("{0}")]
    Invalid(String),
}

/// A pool of `size` connections to `url` (plain TCP or a Unix socket folder).
pub fn pool(config: &PostgresConfig) -> Result<Pool, DbError> {
    let pg: tokio_postgres::Config = config.url.parse()?;
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager).max_size(config.pool_size).build()?)
}

/// Applies the migrations not applied yet; returns (from, to) versions.
pub async fn migrate(pool: &Pool) -> Result<(i32, i32), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let row = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?;
    let from: i32 = row.get(0);
    let known = MIGRATIONS.len() as i32;
    if from > known {
        return Err(DbError::TooNew { found: from, known });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&version, name]).await?;
        tracing::info!(version, name, "migration applied");
    }
    tx.commit().await?;
    Ok((from, known))
}
