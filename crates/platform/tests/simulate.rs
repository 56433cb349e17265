//! The fleet simulation, small, against a real PostgreSQL and Mosquitto,
//! with a real `gated` taking part: a replica killed mid-run and a gate's
//! connection cut, and still every event sent is stored once.

mod support;

use anyhow::Result;
use gate_platform::simulate::{self, Options};
use gate_tests::postgres::Postgres;
use gate_tests::{GateFixture, Mosquitto, RunningDaemon, init_test_logging, resident};
use std::path::PathBuf;
use std::time::Duration;
use support::{BIN, BROKER_CONF, write_config};

const ZHANG: &str = "35020319900101123X";
const STRANGER: &str = "440524188001010014";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_with_a_real_gate_loses_and_doubles_nothing_through_a_replica_kill() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    let path = write_config(dir.path(), &pg.url(), broker.port(), "");
    let config = gate_platform::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = gate_platform::db::pool(&config.postgres)?;

    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let options = Options {
        platform_bin: PathBuf::from(BIN),
        config_path: path.clone(),
        gates: 20,
        replicas: 3,
        rate: 5.0,
        duration: Duration::from_secs(6),
        burst: 20,
        extra_sites: vec!["heshan-c03".into()],
    };
    let run = tokio::spawn({
        let (config, pool, options) = (config.clone(), pool.clone(), options.clone());
        async move { simulate::run(&config, &pool, &options).await }
    });
    // The real gate decides while the fleet runs (and while the replica is
    // down: the kill comes a third into the second phase, after 8 s).
    for id in [ZHANG, STRANGER, ZHANG, STRANGER, ZHANG, STRANGER] {
        fx.present_card(id, "某人").await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let report = run.await?.map_err(|e| anyhow::anyhow!(e))?;
    daemon.stop().await?;
    report.print(&options);
    // 2 phases x 6 s x 5/s x 20 gates, give or take a tick, plus the real gate's.
    assert!(report.sent >= 1000, "{report:?}");
    assert!(report.sent_by_real_gates >= 6, "the real gate's decisions took part: {report:?}");
    assert_eq!((report.lost, report.duplicated), (0, 0), "{report:?}");
    assert_eq!(report.stored, report.sent, "{report:?}");
    assert_eq!(report.burst_rows, 20 * 20);
    assert!(report.burst_rate_1 > 0.0 && report.burst_rate_n > 0.0 && report.copy_rate > 0.0, "{report:?}");
    assert!(report.lag_p99_ms >= report.lag_p50_ms && report.lag_p50_ms > 0.0, "{report:?}");
    Ok(())
}
