//! QR codes from a camera, end to end: `hw-sim camera` holds recorded frames
//! in front of the "lens" (the snapshot file the daemon reads), the daemon
//! decodes them with the same path as the serial scanner, and a code that
//! stays in view for many frames is one decision.

use anyhow::Result;
use gate_core::CredentialKind;
use gate_proto::v1 as pb;
use gate_tests::{
    EVENTS_TOPIC, FixtureOptions, GateFixture, Mosquitto, RunningDaemon, Subscriber, init_test_logging, resident,
};
use qrcode::{Color, QrCode};
use std::path::Path;
use std::time::Duration;

/// A 640x480 grey frame with `payload` drawn as a QR code (or none), as PGM.
fn write_frame(path: &Path, payload: Option<&str>) {
    let (w, h) = (640usize, 480usize);
    let mut luma = vec![170u8; w * h];
    if let Some(payload) = payload {
        let code = QrCode::new(payload.as_bytes()).expect("payload fits a QR code");
        let n = code.width();
        let colors = code.to_colors();
        let module = 4;
        for my in 0..n + 8 {
            for mx in 0..n + 8 {
                let inside = (4..n + 4).contains(&mx) && (4..n + 4).contains(&my);
                let dark = inside && colors[(my - 4) * n + (mx - 4)] == Color::Dark;
                for py in 0..module {
                    for px in 0..module {
                        let (x, y) = (40 + mx * module + px, 40 + my * module + py);
                        if x < w && y < h {
                            luma[y * w + x] = if dark { 20 } else { 235 };
                        }
                    }
                }
            }
        }
    }
    let mut bytes = format!("P5\n{w} {h}\n255\n").into_bytes();
    bytes.extend_from_slice(&luma);
    std::fs::write(path, bytes).expect("write frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_held_in_front_of_the_camera_is_one_decision() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let platform = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let fx = GateFixture::build(
        broker.port(),
        &[resident("p-001", "35020319900101123X", "张三")],
        FixtureOptions {
            extra_toml: format!(
                "[passes]\nplatform_keys = [\"{}\"]\n\n[devices.camera]\nsnapshot_file = \"camera.pgm\"\ninterval_ms = 50\n",
                hex::encode(platform.verifying_key().to_bytes())
            ),
            ..Default::default()
        },
    )?;
    let now = gate_app::wall_clock_ms();
    let token = gate_pass::sign(
        &gate_pass::VisitorPass {
            kid: String::new(),
            site: gate_tests::SITE.into(),
            pass_id: "vp-cam".into(),
            host_person_id: "p-001".into(),
            visitor_id_hash: hex::encode(fx.credential_key(CredentialKind::IdNumber, "11010519491231002X")),
            valid_from_ms: now - 60_000,
            valid_to_ms: now + 3_600_000,
            gates: vec![],
            max_uses: 5,
        },
        &platform,
    );
    let frames = fx.dir.path().join("frames");
    std::fs::create_dir_all(&frames)?;
    write_frame(&frames.join("01-empty.pgm"), None);
    write_frame(&frames.join("02-pass.pgm"), Some(&token));
    // Shown last: its decision is the later marker a second read of the
    // pass would come before.
    write_frame(&frames.join("03-marker.pgm"), Some("VP1.marker"));
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    // Each frame in view for a second (about 20 camera frames), then nothing.
    let list = hw_sim::camera::frames_in(&frames)?;
    let view = fx.dir.path().join("camera.pgm");
    hw_sim::camera::play(&list, &view, Duration::from_millis(1_000), Duration::from_millis(300), false).await?;
    let marker = |s: &Subscriber| s.decisions(EVENTS_TOPIC).iter().any(|d| d.reason() == pb::Reason::PassInvalid);
    sub.wait_until(Duration::from_secs(10), "the marker's decision", marker).await?;
    let decisions = sub.decisions(EVENTS_TOPIC);
    assert_eq!(decisions.len(), 2, "a code in view is read once, an empty view is no decision");
    assert_eq!(decisions[1].reason(), pb::Reason::PassInvalid, "the marker comes last");
    let d = &decisions[0];
    assert_eq!(
        (d.decision(), d.credential_type(), d.pass_id.as_str()),
        (pb::Decision::Pass, pb::CredentialType::QrCode, "vp-cam")
    );
    daemon.stop().await?;
    Ok(())
}
