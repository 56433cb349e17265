//! `gate-platform simulate`: a fleet against the configured broker and
//! PostgreSQL, measured.
//!
//! Phases, on a site of its own (`sim-{unix seconds}`), with `replicas`
//! ingest replicas run as child processes of this binary:
//!
//! 1. **steady**: `gates` simulated gates publish `rate` events per second
//!    each for `duration`: the decision-to-row lag (p50, p99, max).
//! 2. **faults**: the same load again; a third of the way in one replica is
//!    killed (SIGKILL) and restarted 3 s later under the same name; half way
//!    one gate's broker connection is cut (no DISCONNECT: its last will
//!    fires, its session resumes).
//! 3. **burst** (with `burst` > 0): replicas of a group of their own
//!    subscribe and stop; each gate publishes `burst` events at once, which
//!    the broker queues in their sessions; then they start again and drain
//!    them: rows per second from first to last commit, with 1 replica and
//!    again with `replicas`.
//!    Then the same rows are `COPY`ed into a scratch table with the same
//!    indexes in the same PostgreSQL: the ceiling the ingest is held to.
//!
//! Events sent are the unique `event_id`s the broker delivered to a plain
//! (unshared) subscriber of the run's sites; stored, lost and duplicated
//! are read back from `events`. Real `gated`s may take part: their sites
//! are counted the same way (`extra_sites`).
//!
//! The broker must queue without limit for a stopped replica's persistent
//! session (Mosquitto: `max_queued_messages 0`), as in production.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::{SinkExt, StreamExt};
use gate_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::config::PlatformConfig;
use crate::ingest::now_ms;
use crate::sim::SimGate;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `gate-platform` binary the replicas run as.
    pub platform_bin: PathBuf,
    pub config_path: PathBuf,
    pub gates: usize,
    pub replicas: usize,
    /// Events per second per gate.
    pub rate: f64,
    pub duration: Duration,
    /// Events per gate in the burst phase (0: no burst phase).
    pub burst: usize,
    /// Sites of real gates taking part, counted like the simulated ones.
    pub extra_sites: Vec<String>,
}

/// What was measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub site: String,
    pub sent: usize,
    pub stored: usize,
    /// Rows of one (site, gate, seq) stored more than once.
    pub duplicated: usize,
    pub lost: usize,
    /// Of `sent`, those from the real gates.
    pub sent_by_real_gates: usize,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Rows per second, steady phase (offered load bound).
    pub steady_rate: f64,
    pub burst_rows: usize,
    pub burst_rate_1: f64,
    pub burst_rate_n: f64,
    pub copy_rate: f64,
    /// After a burst's last row, at most this long (s) until its seq
    /// progress was applied (an upper bound: polled every 100 ms).
    pub progress_behind_s: f64,
}

impl Report {
    pub fn print(&self, o: &Options) {
        println!("fleet simulation on site {}", self.site);
        println!(
            "  gates {} simulated (+ real gates on {} site(s)), {} replicas, {} event(s)/s per gate, {} s per phase",
            o.gates,
            o.extra_sites.len(),
            o.replicas,
            o.rate,
            o.duration.as_secs()
        );
        println!("  events sent       {} (of which real gates {})", self.sent, self.sent_by_real_gates);
        println!("  events stored     {}", self.stored);
        println!("  duplicated        {}", self.duplicated);
        println!("  lost              {}", self.lost);
        println!("  steady ingest     {:.0} rows/s (the offered load)", self.steady_rate);
        println!(
            "  decision-to-row lag, steady phase: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            self.lag_p50_ms, self.lag_p99_ms, self.lag_max_ms
        );
        if self.burst_rows > 0 {
            println!("  burst of {} rows drained by 1 replica   {:.0} rows/s", self.burst_rows, self.burst_rate_1);
            println!(
                "  burst of {} rows drained by {} replicas  {:.0} rows/s",
                self.burst_rows, o.replicas, self.burst_rate_n
            );
            println!("  raw COPY of the same rows               {:.0} rows/s", self.copy_rate);
            println!("  seq progress applied within {:.1} s of the last row", self.progress_behind_s);
            if self.copy_rate > 0.0 {
                println!(
                    "  ingest / raw COPY: 1 replica {:.0}%, {} replicas {:.0}%",
                    100.0 * self.burst_rate_1 / self.copy_rate,
                    o.replicas,
                    100.0 * self.burst_rate_n / self.copy_rate
                );
            }
        }
    }
}

/// An ingest replica process.
struct ReplicaProcess {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl ReplicaProcess {
    fn start(o: &Options, name: &str) -> Result<Self, String> {
        Self::start_in(o, name, None)
    }

    fn start_in(o: &Options, name: &str, group: Option<&str>) -> Result<Self, String> {
        let mut command = Command::new(&o.platform_bin);
        command.arg("--config").arg(&o.config_path).args(["ingest", "--replica", name]);
        if let Some(group) = group {
            command.args(["--group", group]);
        }
        let mut child = command
            // `SIMULATE_REPLICA_LOG` (a RUST_LOG filter) for a closer look,
            // e.g. `gate_platform=debug` shows every batch's time.
            .env("RUST_LOG", std::env::var("SIMULATE_REPLICA_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", o.platform_bin.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut log) = sink.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
        }
        Ok(ReplicaProcess { name: name.into(), child, log })
    }

    fn count(&self, needle: &str) -> usize {
        self.log.lock().map_or(0, |l| l.matches(needle).count())
    }

    async fn wait_subscribed(&self, times: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count("subscription acknowledged") < 4 * times {
            if Instant::now() > deadline {
                let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
                return Err(format!("replica {} did not subscribe within 30 s:\n{log}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        self.kill();
        // `SIMULATE_REPLICA_LOG_DIR`: each replica's log kept there.
        if let Some(dir) = std::env::var_os("SIMULATE_REPLICA_LOG_DIR") {
            let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
            let path = PathBuf::from(dir).join(format!("{}.log", self.name));
            let _ = std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| {
                use std::io::Write;
                f.write_all(log.as_bytes())
            });
        }
    }
}

/// The ground truth: unique event ids the broker delivered, per site.
struct Truth {
    ids: Arc<Mutex<HashSet<(String, String)>>>,
    stop: CancellationToken,
}

impl Truth {
    async fn connect(config: &PlatformConfig, sites: &[String]) -> Result<Self, String> {
        let mut options = config
            .mqtt
            .options(format!("{}-truth-{}", config.mqtt.client_id, std::process::id()))
            .map_err(|e| e.to_string())?;
        options.set_keep_alive(Duration::from_secs(15)).set_clean_session(true).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        for site in sites {
            client
                .subscribe(format!("{}/{site}/+/events", config.mqtt.topic_prefix), QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string())?;
        }
        let ids = Arc::new(Mutex::new(HashSet::new()));
        let stop = CancellationToken::new();
        let (sink, stopped, wanted) = (ids.clone(), stop.clone(), sites.len());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _client = client;
            let mut ready = Some(ready_tx);
            let mut subacks = 0;
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subacks += 1;
                            if subacks == wanted && let Some(tx) = ready.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Ok(e) = pb::GateEvent::decode(p.payload.as_ref())
                                && let Ok(mut ids) = sink.lock()
                            {
                                ids.insert((e.site_id, e.event_id));
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .map_err(|_| "the ground-truth subscriber got no SUBACK within 10 s".to_owned())?
            .map_err(|_| "the ground-truth subscriber stopped".to_owned())?;
        Ok(Truth { ids, stop })
    }

    fn count(&self) -> usize {
        self.ids.lock().map_or(0, |ids| ids.len())
    }

    fn ids(&self) -> HashSet<(String, String)> {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }
}

impl Drop for Truth {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How many of `sent` are not stored.
async fn unstored(pool: &Pool, sites: &[String], sent: &HashSet<(String, String)>) -> Result<usize, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query("SELECT site_id, event_id FROM events WHERE site_id = ANY($1)", &[&sites])
        .await
        .map_err(|e| e.to_string())?;
    let stored: HashSet<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(sent.iter().filter(|id| !stored.contains(*id)).count())
}

async fn inbox_count(pool: &Pool, site: &str) -> Result<i64, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT count(*) FROM seq_inbox_batches b, unnest(b.site_ids) AS s(site) WHERE s.site = $1",
            &[&site],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

async fn stored_count(pool: &Pool, sites: &[String]) -> Result<usize, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT count(*) FROM events WHERE site_id = ANY($1)", &[&sites])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get::<_, i64>(0) as usize)
}

/// Waits until `$done` (an expression that may `.await` and `?`) holds,
/// polling; fails after `$timeout`. A macro, not a function taking an async
/// closure: the closure's borrows would keep the future from being `Send`.
macro_rules! wait_for {
    ($what:expr, $timeout:expr, $done:expr) => {{
        let deadline = Instant::now() + $timeout;
        loop {
            if $done {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("timed out after {:?} waiting for {}", $timeout, $what));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

/// When, in a loaded phase, something happens to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Third,
    Half,
    TwoThirds,
}

/// Publishes `rate` events/s per gate for `duration`, calling `at` once
/// at each [`Stage`].
async fn load(
    gates: &mut [SimGate],
    rate: f64,
    duration: Duration,
    mut at: impl FnMut(Stage, &mut [SimGate]) -> Result<(), String>,
) -> Result<(), String> {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stages = vec![(Stage::TwoThirds, 2.0 / 3.0), (Stage::Half, 0.5), (Stage::Third, 1.0 / 3.0)];
    while started.elapsed() < duration {
        tick.tick().await;
        while let Some(&(stage, fraction)) = stages.last() {
            if started.elapsed() < duration.mul_f64(fraction) {
                break;
            }
            stages.pop();
            at(stage, gates)?;
        }
        for gate in gates.iter_mut() {
            let event = gate.next_event(now_ms());
            gate.publish(&event).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Runs the simulation.
pub async fn run(config: &PlatformConfig, pool: &Pool, o: &Options) -> Result<Report, String> {
    crate::db::migrate(pool).await.map_err(|e| e.to_string())?;
    let site = format!("sim-{}", now_ms() / 1000);
    let mut sites = vec![site.clone()];
    sites.extend(o.extra_sites.iter().cloned());
    let truth = Truth::connect(config, &sites).await?;
    let mut replicas = Vec::new();
    for i in 1..=o.replicas {
        replicas.push(ReplicaProcess::start(o, &format!("{site}-r{i}"))?);
    }
    for r in &replicas {
        r.wait_subscribed(1).await?;
    }
    let (host, port, prefix) = (config.mqtt.host.clone(), config.mqtt.port, config.mqtt.topic_prefix.clone());
    let mut gates: Vec<SimGate> =
        (1..=o.gates).map(|i| SimGate::connect(&host, port, &prefix, &site, &format!("g{i:04}"))).collect();
    wait_for!("the simulated gates to connect", Duration::from_secs(30), gates.iter().all(SimGate::connected));
    for g in &gates {
        g.publish_status(true, 0, now_ms()).await.map_err(|e| e.to_string())?;
    }

    // 1. Steady.
    let steady_from = now_ms();
    load(&mut gates, o.rate, o.duration, |_, _| Ok(())).await?;
    let steady_to = now_ms();
    let expected = truth.count();
    wait_for!("the steady phase to be stored", Duration::from_secs(120), stored_count(pool, &sites).await? >= expected);
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let lag = client
        .query_one(
            "SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0),
                    coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0),
                    coalesce(max(ms), 0),
                    count(*),
                    coalesce(extract(epoch FROM max(stored_at) - min(stored_at)), 0)::float8
             FROM (SELECT extract(epoch FROM stored_at - occurred_at)::float8 * 1000 AS ms, stored_at FROM events
                   WHERE site_id = $1 AND occurred_at >= to_timestamp($2::float8 / 1000)
                     AND occurred_at <= to_timestamp($3::float8 / 1000)) t",
            &[&site, &(steady_from as f64), &(steady_to as f64)],
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut report = Report {
        site: site.clone(),
        lag_p50_ms: lag.get(0),
        lag_p99_ms: lag.get(1),
        lag_max_ms: lag.get::<_, f64>(2),
        ..Default::default()
    };
    let (rows, span): (i64, f64) = (lag.get(3), lag.get(4));
    report.steady_rate = if span > 0.0 { rows as f64 / span } else { 0.0 };

    // 2. Faults: a replica killed, then restarted under its name; a gate's
    // connection cut.
    let cut = o.gates / 2;
    let victim = replicas[0].name.clone();
    load(&mut gates, o.rate, o.duration, |stage, gates| {
        match stage {
            Stage::Third => replicas[0].kill(),
            Stage::Half => gates[cut].drop_connection(),
            Stage::TwoThirds => replicas[0] = ReplicaProcess::start(o, &victim)?,
        }
        Ok(())
    })
    .await?;
    wait_for!(
        "every event sent to be stored",
        Duration::from_secs(120),
        stored_count(pool, &sites).await? >= truth.count()
    );
    // By identity, not only by count: rows the ground truth never saw (a
    // real gate's events from before it subscribed) would make up for an
    // event still held by the killed replica's session, which the burst
    // phase below then stops for good.
    wait_for!(
        "every event sent to be stored (by id)",
        Duration::from_secs(120),
        unstored(pool, &sites, &truth.ids()).await? == 0
    );

    // 3. Burst.
    if o.burst > 0 {
        let burst_site = format!("{site}-burst");
        for (phase, replica_count) in [(1, 1), (2, o.replicas)] {
            for r in &mut replicas {
                r.stop();
            }
            replicas.clear();
            let phase_site = format!("{burst_site}{phase}");
            // A group of its own: the stopped replicas' sessions, still
            // members of the main group, must not take a share.
            let group = format!("{site}-b{phase}");
            for i in 1..=replica_count {
                replicas.push(ReplicaProcess::start_in(o, &format!("{group}-r{i}"), Some(&group))?);
            }
            for r in &replicas {
                r.wait_subscribed(1).await?;
            }
            // Stopped, their sessions keep the subscription: the broker
            // queues the whole burst for them, so the drain measures the
            // ingest alone, not the publishers.
            for r in &mut replicas {
                r.stop();
            }
            let mut burst_gates: Vec<SimGate> = (1..=o.gates)
                .map(|i| SimGate::connect(&host, port, &prefix, &phase_site, &format!("g{i:04}")))
                .collect();
            wait_for!(
                "the burst gates to connect",
                Duration::from_secs(30),
                burst_gates.iter().all(SimGate::connected)
            );
            for _ in 0..o.burst {
                for g in burst_gates.iter_mut() {
                    let event = g.next_event(now_ms());
                    g.publish(&event).await.map_err(|e| e.to_string())?;
                }
            }
            let total = o.gates * o.burst;
            wait_for!(
                "the burst to reach the broker",
                Duration::from_secs(120),
                burst_gates.iter().map(SimGate::acked).sum::<u64>() as usize >= total
            );
            replicas.clear();
            for i in 1..=replica_count {
                replicas.push(ReplicaProcess::start_in(o, &format!("{group}-r{i}"), Some(&group))?);
            }
            let ps = vec![phase_site.clone()];
            wait_for!("the burst to be stored", Duration::from_secs(600), stored_count(pool, &ps).await? >= total);
            let row = client
                .query_one(
                    "SELECT count(*), extract(epoch FROM max(stored_at) - min(stored_at))::float8 FROM events
                     WHERE site_id = $1",
                    &[&phase_site],
                )
                .await
                .map_err(|e| e.to_string())?;
            let (rows, span): (i64, f64) = (row.get(0), row.get(1));
            let rate = if span > 0.0 { rows as f64 / span } else { 0.0 };
            // The seq bookkeeping runs behind the writers: when it caught up.
            wait_for!(
                "the burst's seq progress to be applied",
                Duration::from_secs(600),
                inbox_count(pool, &phase_site).await? == 0
            );
            let behind = client
                .query_one(
                    "SELECT extract(epoch FROM clock_timestamp() - max(stored_at))::float8 FROM events WHERE site_id = $1",
                    &[&phase_site],
                )
                .await
                .map_err(|e| e.to_string())?;
            report.progress_behind_s = report.progress_behind_s.max(behind.get(0));
            report.burst_rows = rows as usize;
            if phase == 1 {
                report.burst_rate_1 = rate;
            } else {
                report.burst_rate_n = rate;
                report.copy_rate = copy_rate(pool, &phase_site).await?;
            }
            drop(burst_gates);
        }
        for r in &mut replicas {
            r.stop();
        }
    }

    // The counts, over the steady and fault phases (and the real gates).
    let sent = truth.ids();
    let rows = client
        .query("SELECT site_id, event_id FROM events WHERE site_id = ANY($1)", &[&sites])
        .await
        .map_err(|e| e.to_string())?;
    let stored: BTreeSet<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    report.sent = sent.len();
    report.sent_by_real_gates = sent.iter().filter(|(s, _)| *s != site).count();
    // Real gates may have published before the run began: only their
    // events of the run count.
    report.stored = stored.iter().filter(|id| id.0 == site || sent.contains(*id)).count();
    report.lost = sent.iter().filter(|id| !stored.contains(*id)).count();
    let dup = client
        .query_one(
            "SELECT count(*) - count(DISTINCT (site_id, gate_id, seq)) FROM events
             WHERE site_id = ANY($1) AND kind = 'decision'",
            &[&sites],
        )
        .await
        .map_err(|e| e.to_string())?;
    report.duplicated = dup.get::<_, i64>(0) as usize;
    for r in &mut replicas {
        r.stop();
    }
    drop(gates);
    // The simulated gates' retained statuses (their last wills among them)
    // would otherwise stay on the broker and be handed to every replica
    // that ever subscribes there.
    let mut status_topics = Vec::new();
    let mut sim_sites = vec![site.clone()];
    if o.burst > 0 {
        sim_sites.extend((1..=2).map(|phase| format!("{site}-burst{phase}")));
    }
    for s in &sim_sites {
        status_topics.extend((1..=o.gates).map(|i| format!("{prefix}/{s}/g{i:04}/status")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    clear_retained(config, &status_topics).await;
    // The replicas' persistent sessions would otherwise stay on the broker,
    // queueing every later message for clients that never come back.
    let mut names: Vec<String> = (1..=o.replicas).map(|i| format!("{site}-r{i}")).collect();
    if o.burst > 0 {
        names.push(format!("{site}-b1-r1"));
        names.extend((1..=o.replicas).map(|i| format!("{site}-b2-r{i}")));
    }
    for name in names {
        purge_session(config, &format!("{}-{name}", config.mqtt.client_id)).await;
    }
    Ok(report)
}

/// Publishes an empty retained message on each topic, which removes the
/// message the broker retained there.
async fn clear_retained(config: &PlatformConfig, topics: &[String]) {
    let Ok(mut options) = config.mqtt.options(format!("{}-sim-clear", config.mqtt.client_id)) else { return };
    options.set_clean_session(true).set_keep_alive(Duration::from_secs(5)).set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, topics.len().max(1) + 10);
    for topic in topics {
        if client.try_publish(topic.as_str(), QoS::AtLeastOnce, true, Vec::new()).is_err() {
            break;
        }
    }
    let mut acked = 0;
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while acked < topics.len() {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

/// Connects once with a clean session under `client_id`, which ends the
/// persistent session the broker kept for it.
async fn purge_session(config: &PlatformConfig, client_id: &str) {
    let Ok(mut options) = config.mqtt.options(client_id) else { return };
    options.set_clean_session(true).set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::ConnAck(_)) = event {
                let _ = client.disconnect().await;
                let _ = eventloop.poll().await;
                return;
            }
        }
    })
    .await;
}

/// Rows per second of a raw `COPY` of `site`'s rows into a scratch table
/// with the same columns and indexes as `events`.
async fn copy_rate(pool: &Pool, site: &str) -> Result<f64, String> {
    let err = |e: tokio_postgres::Error| e.to_string();
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .batch_execute("DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (LIKE events INCLUDING ALL)")
        .await
        .map_err(err)?;
    let out = client
        .copy_out(&format!("COPY (SELECT * FROM events WHERE site_id = '{}') TO STDOUT", site.replace('\'', "''")))
        .await
        .map_err(err)?;
    let chunks: Vec<bytes::Bytes> =
        out.map(|c| c.map_err(err)).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
    let started = Instant::now();
    let sink = client.copy_in::<_, bytes::Bytes>("COPY bench_copy FROM STDIN").await.map_err(err)?;
    futures_util::pin_mut!(sink);
    for chunk in chunks {
        sink.send(chunk).await.map_err(err)?;
    }
    let rows = sink.finish().await.map_err(err)?;
    let elapsed = started.elapsed().as_secs_f64();
    client.batch_execute("DROP TABLE bench_copy").await.map_err(err)?;
    Ok(if elapsed > 0.0 { rows as f64 / elapsed } else { 0.0 })
}
