//! Per gate and stream progress (`seq_streams`, gap fills, the gates' last
//! event time, a fleet row for a new gate), applied from the
//! `seq_inbox_batches` the writers append to (one row per batch).
//!
//! A writer's batch touches nearly every gate (a shared subscription deals
//! each gate's messages to every replica in turn), so bookkeeping under the
//! rows' locks inside the batch made the replicas take turns. Here one
//! replica at a time, whichever takes the round's advisory lock, applies
//! what the writers committed: it deletes the inbox rows it applies in the
//! transaction that applies them, so every number counts exactly once
//! whatever replica dies when. Rows committed while a round runs are not in
//! its snapshot and wait for the next one.

use std::collections::BTreeMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::DbError;
use crate::seqtrack::SeqState;
use crate::wire;

/// Key of the advisory lock a round holds ("seqround" in ASCII).
const ROUND_LOCK: i64 = 0x7365_7172_6f75_6e64;
/// Inbox rows (writer batches) applied per round at most, so a backlog is
/// applied in transactions of bounded size (at most 100 x `[ingest]
/// batch_max` numbers).
const ROUND_MAX: i64 = 100;
/// How often each replica offers to run a round.
pub const PERIOD: Duration = Duration::from_millis(200);

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// False when another replica held the round's lock.
    pub ran: bool,
    /// Inbox rows (writer batches) taken.
    pub batches: u64,
    /// Numbers (events and alerts) applied.
    pub applied: u64,
}

/// Offers a round every [`PERIOD`] until `shutdown`; a round that fails is
/// rolled back whole and its rows are applied by a later one.
pub async fn run_progress(pool: Pool, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
        loop {
            match apply_round(&pool, crate::ingest::now_ms()).await {
                // A full round: the backlog is not drained yet.
                Ok(round) if round.batches as i64 >= ROUND_MAX && !shutdown.is_cancelled() => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "seq progress round failed; retrying on the next one");
                    break;
                }
            }
        }
    }
}

/// One round at `now_ms`, if no other replica is running one.
pub async fn apply_round(pool: &Pool, now_ms: i64) -> Result<Round, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let elected: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&ROUND_LOCK]).await?.get(0);
    if !elected {
        return Ok(Round::default());
    }
    let rows = tx
        .query(
            "DELETE FROM seq_inbox_batches WHERE id IN (SELECT id FROM seq_inbox_batches ORDER BY id LIMIT $1)
             RETURNING id, site_ids, gate_ids, streams, seqs, occurred_at_ms, explains_stream, explains",
            &[&ROUND_MAX],
        )
        .await?;
    let batches = rows.len() as u64;
    // In the order the writers committed their batches.
    let mut rows: Vec<_> = rows.iter().map(|r| (r.get::<_, i64>(0), r)).collect();
    rows.sort_by_key(|(id, _)| *id);
    let mut applied = 0u64;
    let mut seqs: BTreeMap<(String, String, String), Vec<u64>> = BTreeMap::new();
    let mut explained: BTreeMap<(String, String, String), Vec<(u64, u64)>> = BTreeMap::new();
    let mut newest: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (_, r) in rows {
        let (sites, gates, streams): (Vec<String>, Vec<String>, Vec<String>) = (r.get(1), r.get(2), r.get(3));
        let (numbers, times): (Vec<i64>, Vec<i64>) = (r.get(4), r.get(5));
        let (named, lists): (Vec<Option<String>>, Vec<Option<String>>) = (r.get(6), r.get(7));
        let n = sites.len();
        if [gates.len(), streams.len(), numbers.len(), times.len(), named.len(), lists.len()].iter().any(|&l| l != n) {
            return Err(DbError::Invalid("an inbox row's arrays differ in length".into()));
        }
        applied += n as u64;
        let entries =
            sites.into_iter().zip(gates).zip(streams).zip(numbers).zip(times).zip(named.into_iter().zip(lists));
        for (((((site, gate), stream), seq), at), explains) in entries {
            if stream == "events" {
                let newest = newest.entry((site.clone(), gate.clone())).or_insert(i64::MIN);
                *newest = (*newest).max(at);
            }
            if let (Some(named), Some(list)) = explains {
                explained.entry((site.clone(), gate.clone(), named)).or_default().extend(wire::parse_ranges(&list));
            }
            seqs.entry((site, gate, stream)).or_default().push(seq as u64);
        }
    }
    let states = lock_streams(&tx, &seqs).await?;
    let mut updated = StreamRows::default();
    for (((site, gate, stream), list), mut state) in seqs.iter().zip(states) {
        let gaps_before = state.open_gaps();
        state.apply(list, now_ms);
        // A stream the overflow names is explained only once it is known:
        // a first-seen stream starts at its first number anyway.
        for &(from, to) in explained.get(&(site.clone(), gate.clone(), stream.clone())).into_iter().flatten() {
            state.explain(from, to);
            tx.execute(
                "UPDATE gaps SET explained_by = 'outbox_overflow', filled_at = coalesce(filled_at, now())
                 WHERE site_id = $1 AND gate_id = $2 AND stream = $3 AND from_seq <= $5 AND to_seq >= $4",
                &[site, gate, stream, &(from as i64), &(to as i64)],
            )
            .await?;
        }
        let gaps_after = state.open_gaps();
        let filled: Vec<i64> = gaps_before.into_iter().filter(|g| !gaps_after.contains(g)).collect();
        if !filled.is_empty() {
            tx.execute("UPDATE gaps SET filled_at = now() WHERE gap_id = ANY($1) AND filled_at IS NULL", &[&filled])
                .await?;
            info!(site, gate, stream, gaps = ?filled, "gaps filled");
        }
        let last = if stream == "events" { newest.get(&(site.clone(), gate.clone())).copied() } else { None };
        updated.push(site, gate, stream, &state, last);
    }
    updated.write(&tx).await?;
    if !newest.is_empty() {
        let sites: Vec<&str> = newest.keys().map(|k| k.0.as_str()).collect();
        let gates: Vec<&str> = newest.keys().map(|k| k.1.as_str()).collect();
        // A fleet row for a gate never seen before. An existing row is
        // neither changed nor locked: the writers update it for statuses.
        tx.execute(
            "INSERT INTO gates (site_id, gate_id)
             SELECT u.s, u.g FROM unnest($1::text[], $2::text[]) AS u(s, g)
             ORDER BY u.s COLLATE \"C\", u.g COLLATE \"C\"
             ON CONFLICT (site_id, gate_id) DO NOTHING",
            &[&sites, &gates],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Round { ran: true, batches, applied })
}

/// Takes the row locks of every stream in `seqs` (creating the rows seen
/// for the first time), in key order, and reads their states, in the
/// order of `seqs`. The gap sweeper skips the rows locked here.
async fn lock_streams(
    tx: &Transaction<'_>,
    seqs: &BTreeMap<(String, String, String), Vec<u64>>,
) -> Result<Vec<SeqState>, DbError> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let sites: Vec<&str> = seqs.keys().map(|k| k.0.as_str()).collect();
    let gates: Vec<&str> = seqs.keys().map(|k| k.1.as_str()).collect();
    let streams: Vec<&str> = seqs.keys().map(|k| k.2.as_str()).collect();
    let firsts: Vec<i64> = seqs.values().map(|l| SeqState::first_seen(l).contiguous as i64).collect();
    tx.execute(
        "INSERT INTO seq_streams (site_id, gate_id, stream, contiguous, max_seq)
         SELECT u.s, u.g, u.t, u.c, u.c FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(s, g, t, c)
         ORDER BY u.s COLLATE \"C\", u.g COLLATE \"C\", u.t COLLATE \"C\"
         ON CONFLICT DO NOTHING",
        &[&sites, &gates, &streams, &firsts],
    )
    .await?;
    let rows = tx
        .query(
            "SELECT s.site_id, s.gate_id, s.stream, s.contiguous, s.max_seq, s.holes FROM seq_streams s
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS u(site, gate, stream)
               ON s.site_id = u.site AND s.gate_id = u.gate AND s.stream = u.stream
             ORDER BY s.site_id COLLATE \"C\", s.gate_id COLLATE \"C\", s.stream COLLATE \"C\"
             FOR UPDATE OF s",
            &[&sites, &gates, &streams],
        )
        .await?;
    let mut found: BTreeMap<(String, String, String), SeqState> = rows
        .iter()
        .map(|r| {
            let key = (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2));
            (key, SeqState::from_row(r.get(3), r.get(4), &r.get::<_, Value>(5)))
        })
        .collect();
    seqs.keys()
        .map(|key| {
            found.remove(key).ok_or_else(|| {
                DbError::Invalid(format!("seq_streams row {}/{}/{} vanished under its lock", key.0, key.1, key.2))
            })
        })
        .collect()
}

/// The new states of the streams a round touched, written in one statement.
#[derive(Default)]
struct StreamRows {
    sites: Vec<String>,
    gates: Vec<String>,
    streams: Vec<String>,
    contiguous: Vec<i64>,
    max_seq: Vec<i64>,
    holes: Vec<String>,
    /// The newest event time seen in this round (Unix ms), `events` only.
    last_event_ms: Vec<Option<f64>>,
}

impl StreamRows {
    fn push(&mut self, site: &str, gate: &str, stream: &str, state: &SeqState, last_event_ms: Option<i64>) {
        self.last_event_ms.push(last_event_ms.map(|ms| ms as f64));
        self.sites.push(site.to_owned());
        self.gates.push(gate.to_owned());
        self.streams.push(stream.to_owned());
        self.contiguous.push(state.contiguous as i64);
        self.max_seq.push(state.max_seq as i64);
        self.holes.push(state.holes_json().to_string());
    }

    async fn write(&self, tx: &Transaction<'_>) -> Result<(), DbError> {
        if self.sites.is_empty() {
            return Ok(());
        }
        tx.execute(
            "UPDATE seq_streams s SET contiguous = u.c, max_seq = u.m, holes = u.h::jsonb, updated_at = now(),
                 last_event_at = greatest(s.last_event_at, to_timestamp(u.l / 1000))
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::float8[])
               AS u(site, gate, stream, c, m, h, l)
             WHERE s.site_id = u.site AND s.gate_id = u.gate AND s.stream = u.stream",
            &[
                &self.sites,
                &self.gates,
                &self.streams,
                &self.contiguous,
                &self.max_seq,
                &self.holes,
                &self.last_event_ms,
            ],
        )
        .await?;
        Ok(())
    }
}
