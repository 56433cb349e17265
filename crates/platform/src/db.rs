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
    ("names stored in clear before masking are masked", include_str!("../migrations/0007_mask_stored_names.sql")),
    ("the progress inbox holds one row per batch", include_str!("../migrations/0008_inbox_per_batch.sql")),
];

/// The version whose SQL is followed by [`mask_stored_names`].
const MASK_NAMES_VERSION: i32 = 7;

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

/// Rewrites every person of the identity table whose name is not in its
/// masked form (a database filled before `gate-platform` masked names at
/// import); returns how many. A row that does not decode is left alone and
/// counted in the log, never dropped.
pub async fn mask_stored_names(tx: &tokio_postgres::Transaction<'_>) -> Result<u64, DbError> {
    use prost::Message;
    // Pages in key order, so a district's millions of people are never all
    // in memory at once.
    const PAGE: i64 = 10_000;
    let page = tx
        .prepare(
            "SELECT site_id, person_id, person FROM identity_people WHERE (site_id, person_id) > ($1, $2)
             ORDER BY site_id, person_id LIMIT $3 FOR UPDATE",
        )
        .await?;
    let update = tx.prepare("UPDATE identity_people SET person = $3 WHERE site_id = $1 AND person_id = $2").await?;
    let (mut masked, mut undecodable) = (0u64, 0u64);
    let (mut after_site, mut after_person) = (String::new(), String::new());
    loop {
        let rows = tx.query(&page, &[&after_site, &after_person, &PAGE]).await?;
        for row in &rows {
            let (site, person_id, bytes): (String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
            match gate_proto::v1::Person::decode(bytes.as_slice()) {
                Err(_) => undecodable += 1,
                Ok(mut person) => {
                    let name = gate_core::mask_name(&person.display_name);
                    if name != person.display_name {
                        person.display_name = name;
                        tx.execute(&update, &[&site, &person_id, &person.encode_to_vec()]).await?;
                        masked += 1;
                    }
                }
            }
            (after_site, after_person) = (site, person_id);
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    if undecodable > 0 {
        tracing::warn!(undecodable, "identity rows that do not decode were left as they are");
    }
    Ok(masked)
}

/// Applies the migrations not applied yet; returns (from, to) versions.
pub async fn migrate(pool: &Pool) -> Result<(i32, i32), DbError> {
    migrate_to(pool, MIGRATIONS.len() as i32).await
}

/// Applies the migrations not applied yet up to `target` (the database
/// as an older program would have left it: the upgrade tests start there).
pub async fn migrate_to(pool: &Pool, target: i32) -> Result<(i32, i32), DbError> {
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
    let known = known.min(target.max(from));
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().take(known as usize).skip(from as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await?;
        if version == MASK_NAMES_VERSION {
            let masked = mask_stored_names(&tx).await?;
            tracing::info!(masked, "names stored in clear masked in the identity table");
        }
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&version, name]).await?;
        tracing::info!(version, name, "migration applied");
    }
    tx.commit().await?;
    Ok((from, known))
}
