//! The bad-input catalogue: one table of malformed inputs across every
//! entry point of a running gate (serial frames over real pseudo-terminals
//! from hw-sim, camera frames, MQTT messages through a real Mosquitto, the
//! technician's CSV import, configuration files, control-socket lines).
//!
//! Each row names its input, what the gate must answer (an error text, a
//! block reason, a device error kind) and the counter that must move (on
//! the Prometheus endpoint, or the exit code for the offline tools). The
//! test waits for that counter (a positive marker), then checks that the
//! gate stayed shut and nothing was applied: no unlock coil written on, no
//! pass decision, the identity table, health records and mode as before.

use anyhow::{Context, Result, bail, ensure};
use gate_core::CredentialKind;
use gate_proto::v1 as pb;
use gate_tests::{FixtureOptions, GateFixture, Mosquitto, RunningDaemon, free_port, init_test_logging, resident};
use hw_sim::SimCard;
use hw_sim::script::{StatusFault, StatusTarget};
use prost::Message;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ZHANG: &str = "35020319900101123X";
/// Fails the GB 11643 check.
const FORGED: &str = "350203199001011237";
/// Well formed, in no table.
const STRANGER: &str = "440524188001010014";
const WAIT: Duration = Duration::from_secs(10);
const UNLOCK_COILS: [u16; 2] = [0, 1];
const MALFORMED: &[(&str, &str)] = &[("reason", "malformed")];

/// How a row's input reaches the gate.
enum Input {
    /// Bytes of line noise from the SAM module.
    SamNoise(Vec<u8>),
    /// The module's next reply carries a wrong checksum.
    SamCorruptReply,
    /// The module's next reply is cut short.
    SamTruncatedReply,
    /// The module answers the next card search with this status.
    SamStatus(u8),
    /// A card on the reader.
    Card(SimCard),
    /// Bytes from the QR scanner, as they are.
    QrRaw(Vec<u8>),
    /// A code under the QR scanner (framed by the scanner).
    QrScan(String),
    /// Bytes from the plate camera's adapter.
    PlateRaw(Vec<u8>),
    /// A camera frame holding this QR payload.
    CameraQr(String),
    /// A message from "the platform" on a downlink topic.
    Mqtt { topic: &'static str, payload: Vec<u8> },
    /// A file given to `gatectl identity import`.
    Csv(Vec<u8>),
    /// A file given to `gated check-config`.
    ConfigFile(Vec<u8>),
    /// Bytes written to the control socket, then the write side closed.
    ControlLine(Vec<u8>),
}

/// The counter a row must move.
#[derive(Clone, Copy)]
enum Counter {
    /// A metric, summed over the samples that carry these labels.
    Metric(&'static str, &'static [(&'static str, &'static str)]),
    /// The exit code of an offline tool.
    Exit(i32),
}

/// What the gate must answer.
#[derive(Clone, Copy)]
enum Expect {
    /// A decision blocked for this reason (the event on the broker).
    Blocked(&'static str),
    /// Text in the tool's stderr or the control reply.
    Says(&'static str),
    /// Only the counter (a device error kind, a dropped message).
    Counted,
}

struct Row {
    name: &'static str,
    input: Input,
    expect: Expect,
    counter: Counter,
}

fn card(id: &str) -> SimCard {
    SimCard::resident(id, "王五")
}

fn rows(fx: &GateFixture, platform: &ed25519_dalek::SigningKey, topics: &Topics) -> Vec<Row> {
    use Counter::*;
    use Expect::*;
    use Input::*;
    let now = gate_app::wall_clock_ms();
    let pass = |site: &str, from: i64, to: i64| {
        gate_pass::sign(
            &gate_pass::VisitorPass {
                kid: String::new(),
                site: site.into(),
                pass_id: "vp-cat".into(),
                host_person_id: "p-001".into(),
                visitor_id_hash: hex::encode(fx.credential_key(CredentialKind::IdNumber, STRANGER)),
                valid_from_ms: from,
                valid_to_ms: to,
                gates: vec![],
                max_uses: 1,
            },
            platform,
        )
    };
    let good_pass = pass(gate_tests::SITE, now - 60_000, now + 3_600_000);
    let forged_pass = {
        // The payload of a valid pass with its signature's first byte flipped.
        let (head, sig) = good_pass.rsplit_once('.').expect("a token has a signature");
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        format!("{head}.{flipped}{}", &sig[1..])
    };
    let expired = |mut c: SimCard| {
        c.valid_from = "20100101".into();
        c.valid_to = "20200101".into();
        c
    };
    let typed = |mut c: SimCard, t: char| {
        c.card_type = Some(t);
        c
    };
    let mut rows = vec![
        // --- the SAM module, over a pseudo-terminal ---
        Row {
            name: "sam: 64 bytes of line noise",
            input: SamNoise(hw_sim::faults::noise(64)),
            expect: Counted,
            counter: Metric("gated_device_garbage_bytes_total", &[("device", "id_card")]),
        },
        Row {
            name: "sam: a reply with a wrong checksum",
            input: SamCorruptReply,
            expect: Counted,
            counter: Metric("gated_device_errors_total", &[("device", "id_card"), ("kind", "checksum")]),
        },
        Row {
            name: "sam: a reply cut short",
            input: SamTruncatedReply,
            expect: Counted,
            counter: Metric("gated_device_errors_total", &[("device", "id_card"), ("kind", "timeout")]),
        },
        Row {
            name: "sam: status 0x31, the card fails authentication",
            input: SamStatus(0x31),
            expect: Counted,
            counter: Metric("gated_device_errors_total", &[("device", "id_card"), ("kind", "auth")]),
        },
        Row {
            name: "sam: status 0x10, an unknown status word",
            input: SamStatus(0x10),
            expect: Counted,
            counter: Metric("gated_device_errors_total", &[("device", "id_card"), ("kind", "status")]),
        },
        Row {
            name: "card: an ID number failing the GB 11643 check",
            input: Card(card(FORGED)),
            expect: Blocked("invalid_id_number"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "invalid_id_number")]),
        },
        Row {
            name: "card: a 2023 foreigner card (type Y, layout not public)",
            input: Card(typed(card(ZHANG), 'Y')),
            expect: Blocked("unsupported_card"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "unsupported_card")]),
        },
        Row {
            name: "card: expired on 2020-01-01",
            input: Card(expired(card(ZHANG))),
            expect: Blocked("card_expired"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "card_expired")]),
        },
        Row {
            name: "card: a well-formed number in no table",
            input: Card(card(STRANGER)),
            expect: Blocked("unknown_person"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "unknown_person")]),
        },
        Row {
            name: "card: a valid-to date of 2099-02-30",
            input: Card({
                let mut c = card(ZHANG);
                c.valid_to = "20990230".into();
                c
            }),
            expect: Blocked("card_unreadable"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "card_unreadable")]),
        },
        Row {
            name: "card: an ID number of letters",
            input: Card(card("ABCDEFGHIJKLMNOPQR")),
            expect: Blocked("invalid_id_number"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "invalid_id_number")]),
        },
        // --- the QR scanner, over a pseudo-terminal ---
        Row {
            name: "qr: a frame that is not UTF-8",
            input: QrRaw(b"\xff\xfe\xc3\x28VP1.\r".to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "qr")]),
        },
        Row {
            name: "qr: a frame of 5000 bytes (limit 4096)",
            input: QrRaw({
                let mut b = vec![b'A'; 5000];
                b.push(b'\r');
                b
            }),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "qr")]),
        },
        Row {
            name: "qr: a terminator alone (empty frame)",
            input: QrRaw(b"\r".to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "qr")]),
        },
        Row {
            name: "qr: a visitor pass with a forged signature",
            input: QrScan(forged_pass.clone()),
            expect: Blocked("pass_invalid"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "pass_invalid")]),
        },
        Row {
            name: "qr: VP1. followed by no base64",
            input: QrScan("VP1.!!!!.????".into()),
            expect: Blocked("pass_invalid"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "pass_invalid")]),
        },
        Row {
            name: "qr: a valid signature on a pass for another site",
            input: QrScan(pass("another-site", now - 60_000, now + 3_600_000)),
            expect: Blocked("pass_invalid"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "pass_invalid")]),
        },
        Row {
            name: "qr: a pass that expired an hour ago",
            input: QrScan(pass(gate_tests::SITE, now - 7_200_000, now - 3_600_000)),
            expect: Blocked("pass_expired"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "pass_expired")]),
        },
        Row {
            name: "qr: HC1: with characters outside base45",
            input: QrScan("HC1:abc~~~".into()),
            expect: Blocked("health_unverified"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "health_unverified")]),
        },
        Row {
            name: "qr: HC1: with base45 that is not zlib",
            input: QrScan("HC1:6BF+70790T9WJWG".into()),
            expect: Blocked("health_unverified"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "health_unverified")]),
        },
        Row {
            name: "qr: a static code nobody holds",
            input: QrScan("CODE-NOBODY-0001".into()),
            expect: Blocked("unknown_person"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "unknown_person")]),
        },
        // --- the plate camera's adapter, over a pseudo-terminal ---
        Row {
            name: "plate: two fields",
            input: PlateRaw("闽D12345,0.93\r\n".as_bytes().to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "plate")]),
        },
        Row {
            name: "plate: confidence NaN",
            input: PlateRaw("闽D12345,blue,NaN\r\n".as_bytes().to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "plate")]),
        },
        Row {
            name: "plate: confidence 1.5",
            input: PlateRaw("闽D12345,blue,1.5\r\n".as_bytes().to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "plate")]),
        },
        Row {
            name: "plate: an empty colour",
            input: PlateRaw("闽D12345,,0.9\r\n".as_bytes().to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "plate")]),
        },
        Row {
            name: "plate: a line that is not UTF-8",
            input: PlateRaw(b"\xe9\x97\xbdD\xff\xfe,blue,0.9\r\n".to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "plate")]),
        },
        Row {
            name: "plate: not a plate number",
            input: PlateRaw(b"!!!,blue,0.9\r\n".to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "plate")]),
        },
        Row {
            name: "plate: confidence 0.1, below the threshold",
            input: PlateRaw("闽D54321,blue,0.1\r\n".as_bytes().to_vec()),
            expect: Counted,
            counter: Metric("gated_unusable_reads_total", &[("kind", "plate")]),
        },
        // --- the camera ---
        Row {
            name: "camera: a frame showing a forged pass",
            input: CameraQr(forged_pass),
            expect: Blocked("pass_invalid"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "pass_invalid")]),
        },
        Row {
            name: "camera: a frame showing HC1: garbage",
            input: CameraQr("HC1:NOT-A-CERTIFICATE".into()),
            expect: Blocked("health_unverified"),
            counter: Metric("gated_decisions_total", &[("result", "block"), ("reason", "health_unverified")]),
        },
    ];
    // --- MQTT, from "the platform" through a real broker ---
    // Envelopes the signed-downlink check refuses before reading anything.
    let refused = |name: &'static str,
                   topic: &'static str,
                   payload: Vec<u8>,
                   reason: &'static [(&'static str, &'static str)]| Row {
        name,
        input: Mqtt { topic, payload },
        expect: Counted,
        counter: Metric("gated_downlink_refused_total", reason),
    };
    let stranger = hw_sim::platform::PlatformKey::from_seed([99; 32], Some(gate_tests::PLATFORM_KEY_ID));
    let unknown = hw_sim::platform::PlatformKey::from_seed([98; 32], Some("nobody-knows-me"));
    let wartime = gate_tests::mode_change(pb::Mode::Wartime, 0, "district");
    rows.extend([
        refused("mqtt mode: random bytes, no envelope", topics.mode, b"\xff\x00garbage\x01".to_vec(), MALFORMED),
        refused("mqtt mode: a bare ModeChange, not sealed", topics.mode, wartime.clone(), &[("reason", "malformed")]),
        refused(
            "mqtt mode: signed by a key the gate does not know",
            topics.mode,
            unknown.seal(gate_tests::SITE, "", "mode", &wartime),
            &[("reason", "unknown_key")],
        ),
        refused(
            "mqtt mode: a known key id, signed by another key",
            topics.mode,
            stranger.seal(gate_tests::SITE, "", "mode", &wartime),
            &[("reason", "bad_signature")],
        ),
        refused(
            "mqtt mode: a valid signature for another site",
            topics.mode,
            gate_tests::platform_key().seal("another-site", "", "mode", &wartime),
            &[("reason", "wrong_site")],
        ),
        refused(
            "mqtt mode: a valid signature for another gate",
            topics.mode,
            gate_tests::platform_key().seal(gate_tests::SITE, "west-9", "mode", &wartime),
            &[("reason", "wrong_gate")],
        ),
        refused(
            "mqtt identity: a mode envelope on the identity topic",
            topics.identity,
            gate_tests::platform_key().seal(gate_tests::SITE, "", "mode", &wartime),
            &[("reason", "wrong_stream")],
        ),
        refused("mqtt trust: random bytes, no envelope", topics.trust, b"\x1a\x01".to_vec(), MALFORMED),
    ]);
    // Sealed correctly, so the handler of the stream reads the payload and
    // refuses it.
    let rejected = |name: &'static str, topic: &'static str, payload: Vec<u8>| Row {
        name,
        input: Mqtt { topic, payload: gate_tests::seal_for(topic, &payload) },
        expect: Counted,
        counter: Metric("gated_downlink_messages_total", &[("kind", "rejected")]),
    };
    let identity = |body: Option<pb::identity_batch::Body>| pb::IdentityBatch { body }.encode_to_vec();
    rows.extend([
        rejected("mqtt mode: signed random bytes", topics.mode, b"\xff\x00garbage\x01".to_vec()),
        rejected(
            "mqtt mode: signed mode 7 (no such mode)",
            topics.mode,
            pb::ModeChange { mode: 7, effective_at_ms: 0, issued_by: "x".into(), reason: "y".into() }.encode_to_vec(),
        ),
        rejected("mqtt mode: a signed protobuf cut short", topics.mode, {
            let mut b = wartime.clone();
            b.truncate(b.len() - 3);
            b
        }),
        rejected("mqtt identity: signed random bytes", topics.identity, b"\x0a\xff\xff\xff\xff\x0f".to_vec()),
        rejected("mqtt identity: a signed batch with no body", topics.identity, identity(None)),
        rejected(
            "mqtt identity: a signed snapshot of chunk 3 of 0",
            topics.identity,
            identity(Some(pb::identity_batch::Body::Snapshot(pb::IdentitySnapshotChunk {
                version: 9,
                chunk_index: 3,
                chunk_count: 0,
                ..Default::default()
            }))),
        ),
        rejected("mqtt health: signed random bytes", topics.health, b"\x12\x34\x56\x78\x9a".to_vec()),
        rejected(
            "mqtt health: to_version not above from_version",
            topics.health,
            pb::HealthBatch { from_version: 5, to_version: 5, ..Default::default() }.encode_to_vec(),
        ),
        rejected("mqtt health answer: signed random bytes", topics.health_resp, b"\x0a\x05ab".to_vec()),
        rejected(
            "mqtt trust: a signed list of 1001 certificates",
            topics.trust,
            gate_sync::encode_trust_list(3, vec![vec![1, 2, 3]; 1001], now),
        ),
    ]);
    // A delta from a version the gate does not hold is not applied; the gate
    // asks for a resync instead.
    rows.push(Row {
        name: "mqtt identity: a signed delta from a version the gate does not have",
        input: Mqtt {
            topic: topics.identity,
            payload: gate_tests::seal_for(
                topics.identity,
                &identity(Some(pb::identity_batch::Body::Delta(pb::IdentityDelta {
                    from_version: 41,
                    to_version: 42,
                    deletes: vec!["p-001".into()],
                    ..Default::default()
                }))),
            ),
        },
        expect: Counted,
        counter: Metric("gated_downlink_messages_total", &[("kind", "resync_request")]),
    });
    // Replays: a counter the stream has already passed (the rows above left
    // a counter of the clock in microseconds on each stream).
    rows.push(refused(
        "mqtt mode: a signed change with a replayed counter",
        topics.mode,
        gate_tests::platform_key().seal_with(gate_tests::SITE, "", "mode", 1, now, &wartime),
        &[("reason", "replay")],
    ));
    // --- the technician's CSV import (gatectl) ---
    let header = "person_id,category,id_number,name,valid_from,valid_to\n";
    let csv = |name, body: &str, says| Row {
        name,
        input: Csv(format!("{header}{body}").into_bytes()),
        expect: Says(says),
        counter: Exit(64),
    };
    rows.extend([
        Row {
            name: "csv: a wrong header",
            input: Csv(b"id,name\n1,x\n".to_vec()),
            expect: Says("the header must be"),
            counter: Exit(64),
        },
        csv("csv: an unknown category", "p-9,landlord,11010519491231002X,李四,2024-01-01,2030-01-01\n", "category must be"),
        csv("csv: an ID number failing the check", &format!("p-9,resident,{FORGED},李四,2024-01-01,2030-01-01\n"), "id_number"),
        csv("csv: valid_from after valid_to", "p-9,resident,11010519491231002X,李四,2030-01-01,2024-01-01\n", "is after valid_to"),
        csv("csv: a date that does not exist", "p-9,resident,11010519491231002X,李四,2024-02-30,2030-01-01\n", "valid_from"),
        csv(
            "csv: the same person twice",
            "p-9,resident,11010519491231002X,李四,2024-01-01,2030-01-01\np-9,worker,35020319900101123X,张三,2024-01-01,2030-01-01\n",
            "already appears on line",
        ),
        csv("csv: a row with three fields", "p-9,resident,11010519491231002X\n", "malformed row"),
        Row {
            name: "csv: bytes that are neither UTF-8 nor GBK",
            input: Csv(b"person_id\xff\xff\xff,category\n\x80\x80\n".to_vec()),
            expect: Says("nothing was imported"),
            counter: Exit(64),
        },
        Row { name: "csv: an empty file", input: Csv(Vec::new()), expect: Says("header"), counter: Exit(64) },
    ]);
    // --- configuration files (gated check-config) ---
    let config =
        |name, text: &[u8], says| Row { name, input: ConfigFile(text.to_vec()), expect: Says(says), counter: Exit(64) };
    rows.extend([
        config("config: not TOML", b"[site\nid = \"x\"\n", "gated.toml:1:"),
        config("config: an unknown key", b"[site]\nid = \"x\"\nsite_name = \"y\"\n", "site_name"),
        config("config: bytes that are not UTF-8", b"[site]\nid = \"\xff\xfe\"\n", "gated.toml:2:"),
        config("config: a port of 70000", b"[site]\nid = \"x\"\n[mqtt]\nport = 70000\n", "gated.toml:4:"),
        config("config: no [site] section", b"[gate]\nid = \"east-1\"\n", "site"),
    ]);
    // --- the control socket ---
    let control = |name, line: &[u8], says| Row {
        name,
        input: ControlLine(line.to_vec()),
        expect: Says(says),
        counter: Metric("gated_control_refused_total", &[]),
    };
    rows.extend([
        control("control: a line that is not JSON", b"status please\n", "malformed request"),
        control(
            "control: protocol version 2",
            b"{\"v\":2,\"cmd\":\"status\"}\n",
            "protocol version 2 is not supported",
        ),
        control("control: a request with no newline", b"{\"v\":1,\"cmd\":\"status\"}", "not ended by a newline"),
        control("control: a line of 70 KiB", &[b'x'; 70 * 1024], "too long"),
        control("control: an unknown command", b"{\"v\":1,\"cmd\":\"format_disk\"}\n", "malformed request"),
        control(
            "control: a lookup of an unknown credential kind",
            b"{\"v\":1,\"cmd\":\"lookup\",\"credential\":{\"kind\":\"dna\",\"value\":\"x\"},\"side\":null}\n",
            "malformed request",
        ),
    ]);
    rows
}

/// The downlink topics of the fixture's site and gate.
struct Topics {
    mode: &'static str,
    identity: &'static str,
    health: &'static str,
    health_resp: &'static str,
    trust: &'static str,
}

const TOPICS: Topics = Topics {
    mode: "village/heshan-c03/mode",
    identity: "village/heshan-c03/identity",
    health: "village/heshan-c03/health",
    health_resp: "village/heshan-c03/east-1/health/resp",
    trust: "village/heshan-c03/trust",
};

/// One scrape of the metrics endpoint: `name{labels}` to value.
struct Scrape(HashMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    async fn take(port: u16) -> Result<Scrape> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
        let mut response = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await??;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b).context("an HTTP response")?;
        let mut samples = HashMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (key, value) = line.rsplit_once(' ').context("a sample")?;
            let (name, labels) = match key.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .filter_map(|p| p.split_once("=\""))
                        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (key.to_owned(), Vec::new()),
            };
            samples.insert((name, labels), value.parse().unwrap_or(f64::NAN));
        }
        Ok(Scrape(samples))
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|(_, v)| *v)
            .sum()
    }

    fn counter(&self, counter: Counter) -> f64 {
        match counter {
            Counter::Metric(name, labels) => self.sum(name, labels),
            Counter::Exit(_) => 0.0,
        }
    }
}

/// What must not change while a row is fed in.
#[derive(Debug, PartialEq)]
struct Applied {
    identity_version: u64,
    health_version: u64,
    people: u64,
    mode: Option<String>,
    trust: u64,
}

fn applied(store_path: &Path) -> Result<Applied> {
    let store = gate_store::Store::open(store_path)?;
    Ok(Applied {
        identity_version: store.identity_state()?.version,
        health_version: store.health_state()?.version,
        people: store.person_count()?,
        mode: store.mode_schedule()?.map(|s| format!("{s:?}")),
        trust: store.trust_list_version()?,
    })
}

/// The folder of this test's binary's `target/<profile>`, where cargo puts
/// `gated` and `gatectl` (`cargo test --workspace` builds them).
fn tool(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("target/<profile>")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo build -p {name}`, or run `cargo test --workspace`)",
            path.display()
        );
    }
    Ok(path)
}

/// A 640x480 grey frame with `payload` drawn as a QR code, as PGM.
fn write_frame(path: &Path, payload: &str) -> Result<()> {
    let (w, h) = (640usize, 480usize);
    let mut luma = vec![170u8; w * h];
    let code = qrcode::QrCode::new(payload.as_bytes())?;
    let n = code.width();
    let colors = code.to_colors();
    let module = 4;
    for my in 0..n + 8 {
        for mx in 0..n + 8 {
            let inside = (4..n + 4).contains(&mx) && (4..n + 4).contains(&my);
            let dark = inside && colors[(my - 4) * n + (mx - 4)] == qrcode::Color::Dark;
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
    let mut bytes = format!("P5\n{w} {h}\n255\n").into_bytes();
    bytes.extend_from_slice(&luma);
    // Written beside and renamed: the daemon never reads half a frame.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn blank_frame(path: &Path) -> Result<()> {
    let mut bytes = b"P5\n64 48\n255\n".to_vec();
    bytes.extend(std::iter::repeat_n(170u8, 64 * 48));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_input_is_refused_counted_and_leaves_the_gate_shut() -> Result<()> {
    init_test_logging();
    let gatectl = tool("gatectl")?;
    let gated = tool("gated")?;
    let broker = Mosquitto::start()?;
    let sub = gate_tests::Subscriber::connect(broker.port(), "village/#").await?;
    let platform = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let metrics_port = free_port();
    let fx = GateFixture::build(
        broker.port(),
        &[resident("p-001", ZHANG, "张三")],
        FixtureOptions {
            qr_scanner: true,
            plate_reader: true,
            extra_toml: format!(
                "[passes]\nplatform_keys = [\"{}\"]\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n[devices.camera]\nsnapshot_file = \"camera.pgm\"\ninterval_ms = 50\n",
                hex::encode(platform.verifying_key().to_bytes())
            ),
            ..Default::default()
        },
    )?;
    let camera = fx.dir.path().join("camera.pgm");
    blank_frame(&camera)?;
    let config = fx.config();
    let socket = config.control.socket.clone();
    let daemon = RunningDaemon::start(config);
    daemon.wait_connected().await?;
    let deadline = Instant::now() + WAIT;
    while !socket.exists() || Scrape::take(metrics_port).await.is_err() {
        if Instant::now() > deadline {
            bail!("the control socket and metrics endpoint did not come up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let qr = fx.qr.as_ref().context("a QR scanner")?;
    let plate = fx.plate.as_ref().context("a plate reader")?;
    let rows = rows(&fx, &platform, &TOPICS);
    assert!(rows.len() >= 40, "the catalogue has {} rows", rows.len());
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for row in rows {
        let outcome: Result<String> = async {
            let before = Scrape::take(metrics_port).await?;
            let state_before = applied(&fx.store_path)?;
            let coil_writes_before = fx.gate.coil_writes().len();
            let events_before = sub.unique_events(gate_tests::EVENTS_TOPIC).len();
            let mut said = String::new();
            match &row.input {
                Input::SamNoise(bytes) => fx.idcard.inject_garbage(bytes.clone()),
                Input::SamCorruptReply => fx.idcard.corrupt_next_replies(1),
                Input::SamTruncatedReply => fx.idcard.truncate_next_replies(1),
                Input::SamStatus(code) => fx.idcard.inject_status(StatusFault {
                    code: *code,
                    target: Some(StatusTarget::Find),
                    sticky: false,
                }),
                Input::Card(card) => {
                    let reads = fx.idcard.base_info_reads();
                    fx.idcard.place(card.clone());
                    let deadline = Instant::now() + WAIT;
                    while fx.idcard.base_info_reads() == reads && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Input::QrRaw(bytes) => qr.send_raw(bytes.clone()),
                Input::QrScan(text) => qr.scan(text),
                Input::PlateRaw(bytes) => plate.send_raw(bytes.clone()),
                Input::CameraQr(text) => write_frame(&camera, text)?,
                Input::Mqtt { topic, payload } => {
                    gate_tests::publish(broker.port(), topic, payload.clone(), false).await?
                }
                Input::Csv(bytes) => {
                    let Counter::Exit(code) = &row.counter else { bail!("a CSV row is judged by its exit code") };
                    let file = fx.dir.path().join("people.csv");
                    std::fs::write(&file, bytes)?;
                    let out = Command::new(&gatectl)
                        .args(["identity", "import", "--config"])
                        .arg(&fx.config_path)
                        .arg(&file)
                        .output()?;
                    said = String::from_utf8_lossy(&out.stderr).into_owned();
                    ensure!(
                        out.status.code() == Some(*code),
                        "exit code {:?}, not {code}; stderr: {said}",
                        out.status.code()
                    );
                }
                Input::ConfigFile(bytes) => {
                    let Counter::Exit(code) = &row.counter else { bail!("a config row is judged by its exit code") };
                    let file = fx.dir.path().join("bad/gated.toml");
                    std::fs::create_dir_all(file.parent().context("a folder")?)?;
                    std::fs::write(&file, bytes)?;
                    let out = Command::new(&gated).arg("check-config").arg(&file).output()?;
                    said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                    ensure!(
                        out.status.code() == Some(*code),
                        "exit code {:?}, not {code}; output: {said}",
                        out.status.code()
                    );
                }
                Input::ControlLine(bytes) => {
                    let mut stream = tokio::net::UnixStream::connect(&socket).await?;
                    // A long line is refused before it is all read: the write
                    // may then fail, which is the daemon's right.
                    let _ = stream.write_all(bytes).await;
                    let _ = stream.shutdown().await;
                    // The daemon closes with part of a long line unread, so
                    // the reply may be followed by a reset: what came
                    // before it is the reply.
                    let mut reply = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await? {
                            Ok(0) => break,
                            Ok(n) => reply.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !reply.is_empty() => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    said = String::from_utf8_lossy(&reply).into_owned();
                }
            }
            // The positive marker: the row's counter moved.
            let moved = match row.counter {
                Counter::Exit(code) => format!("exit {code}"),
                counter => {
                    let deadline = Instant::now() + WAIT;
                    loop {
                        let now = Scrape::take(metrics_port).await?;
                        let (was, is) = (before.counter(counter), now.counter(counter));
                        if is > was {
                            break format!("+{}", is - was);
                        }
                        if Instant::now() > deadline {
                            bail!("the counter did not move within {WAIT:?} (still {is})");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            match row.expect {
                Expect::Blocked(reason) => {
                    sub.wait_until(WAIT, row.name, |s| s.unique_events(gate_tests::EVENTS_TOPIC).len() > events_before)
                        .await?;
                    let events = sub.unique_events(gate_tests::EVENTS_TOPIC);
                    let event = events.last().context("an event")?;
                    let wire = pb::Reason::from_str_name(&format!("REASON_{}", reason.to_uppercase()))
                        .with_context(|| format!("{reason} is a wire reason"))?;
                    ensure!(
                        event.reason == wire as i32 && event.decision == pb::Decision::Block as i32,
                        "the last event is decision {} reason {}, not a block for {reason}",
                        event.decision,
                        event.reason
                    );
                }
                Expect::Says(text) => {
                    ensure!(said.contains(text), "expected {text:?} in {said:?}");
                    for secret in [ZHANG, FORGED, STRANGER, "11010519491231002X"] {
                        ensure!(!said.contains(secret), "an ID number in clear in {said:?}");
                    }
                }
                Expect::Counted => {}
            }
            // Gate shut, nothing applied.
            let after = Scrape::take(metrics_port).await?;
            let unlocks: Vec<_> = fx.gate.coil_writes()[coil_writes_before..]
                .iter()
                .filter(|w| w.on && UNLOCK_COILS.contains(&w.coil))
                .cloned()
                .collect();
            ensure!(unlocks.is_empty(), "an unlock coil was written on: {unlocks:?}");
            ensure!(
                after.sum("gated_decisions_total", &[("result", "pass")])
                    == before.sum("gated_decisions_total", &[("result", "pass")]),
                "a pass was decided"
            );
            let state_after = applied(&fx.store_path)?;
            ensure!(state_after == state_before, "something was applied: {state_before:?} became {state_after:?}");
            Ok(moved)
        }
        .await;
        // A card stays on the reader until the row is done, so it is read
        // once; then the field is empty again for the next row.
        if let Input::Card(_) = row.input {
            fx.idcard.remove();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Input::CameraQr(_) = row.input {
            blank_frame(&camera)?;
            // Out of view longer than the debouncer holds a code.
            tokio::time::sleep(gate_camera_hold()).await;
        }
        let moved = match outcome {
            Ok(moved) => moved,
            Err(e) => {
                eprintln!("{:<64} FAILED: {e:#}", row.name);
                failures.push(format!("{}: {e:#}", row.name));
                continue;
            }
        };
        let expected = match row.expect {
            Expect::Blocked(reason) => format!("blocked: {reason}"),
            Expect::Says(text) => format!("says: {text}"),
            Expect::Counted => "counted".to_owned(),
        };
        let counter = match row.counter {
            Counter::Metric(name, labels) => {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                format!("{name}{{{}}} {moved}", labels.join(","))
            }
            Counter::Exit(code) => format!("exit code {code}"),
        };
        eprintln!("{:<64} {:<40} {:<70} shut, nothing applied", row.name, expected, counter);
        table.push(serde_json::json!({
            "name": row.name,
            "expected": expected,
            "counter": counter,
            "gate": "shut, nothing applied",
        }));
    }
    eprintln!("{} rows", table.len());
    // The control row: a valid card opens the gate, so the checks above
    // can see an unlock and a pass when there is one.
    let coil_writes_before = fx.gate.coil_writes().len();
    fx.present_card(ZHANG, "张三").await?;
    let deadline = Instant::now() + WAIT;
    while !fx.gate.coil_writes()[coil_writes_before..].iter().any(|w| w.on && UNLOCK_COILS.contains(&w.coil)) {
        ensure!(Instant::now() < deadline, "control row: a valid card did not unlock the gate within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // For the reliability report.
    if let Ok(path) = std::env::var("GATE_CATALOGUE_JSON") {
        std::fs::write(path, serde_json::to_string_pretty(&serde_json::json!({ "rows": table }))?)?;
    }
    daemon.stop().await?;
    ensure!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len() + failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The camera's debounce hold plus a margin.
fn gate_camera_hold() -> Duration {
    Duration::from_millis(1_800)
}
