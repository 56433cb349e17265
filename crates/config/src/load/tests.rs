//! Tests of the configuration loader: each kind of error with its exact
//! position, defaults, path resolution and the shipped example file.

use super::*;

const FILE: &str = "/etc/gated/gated.toml";

/// The smallest valid file; extra tables appended to it start at line 9.
const BASE: &str = r#"[site]
id = "heshan-c03"
[gate]
id = "east-1"
[store]
path = "/var/lib/gated/gated.db"
[identity]
hmac_key_file = "/etc/gated/site.key"
"#;

const GATE_KEYS_LIST: &str = "driver, port, baud, unit_id, unlock_entry_coil, unlock_exit_coil, unlock_mode, \
                              unlock_ms, passage_entry_input, passage_exit_input, poll_interval_ms, \
                              fire_alarm_input, fire_alarm_normally_closed, io_loss_is_fire_alarm, \
                              fire_alarm_io_loss_ms, beam_input, intrusion_input, green_lamp_coil, red_lamp_coil, \
                              buzzer_coil, indicator_ms, pass_timeout_ms, held_open_ms";

/// An expected error: line, column, dotted key ("" for none), message.
type ErrorAt<'a> = (usize, usize, &'a str, &'a str);

fn with_base(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn ok(text: &str) -> Config {
    match parse(Path::new(FILE), text) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

/// Parses `text` and checks that exactly the `expected` errors come out, as
/// (line, column, dotted key or "", message), in file order. Also checks the
/// `FILE:LINE:COL: KEY: MESSAGE` rendering of each.
fn assert_errors(name: &str, text: &str, expected: &[ErrorAt]) {
    let errors = match parse(Path::new(FILE), text) {
        Ok(_) => panic!("{name}: expected errors, the config was accepted"),
        Err(errors) => errors,
    };
    let got: Vec<(usize, usize, String, String)> = errors
        .0
        .iter()
        .map(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0), e.key.clone().unwrap_or_default(), e.message.clone()))
        .collect();
    let want: Vec<(usize, usize, String, String)> =
        expected.iter().map(|&(l, c, k, m)| (l, c, k.to_owned(), m.to_owned())).collect();
    assert_eq!(got, want, "{name}:\n{errors}");
    for (error, &(line, column, key, message)) in errors.0.iter().zip(expected) {
        assert_eq!(error.file, Path::new(FILE), "{name}");
        let key = if key.is_empty() { String::new() } else { format!("{key}: ") };
        assert_eq!(error.to_string(), format!("{FILE}:{line}:{column}: {key}{message}"), "{name}");
    }
    let rendered = errors.to_string();
    assert_eq!(rendered.lines().count(), expected.len(), "{name}: one error per line:\n{rendered}");
}

#[test]
fn syntax_error_has_line_and_character_column() {
    // "é" is two bytes but one column.
    assert_errors(
        "syntax",
        "[site]\nid = \"é\" x\n",
        &[(2, 10, "", "invalid TOML: unexpected key or value, expected newline, `#`")],
    );
    assert_errors(
        "unclosed header",
        "[site]\nid = \"a\"\n[gate\n",
        &[(3, 6, "", "invalid TOML: unclosed table, expected `]`")],
    );
    assert_errors(
        "duplicate key",
        &format!("{BASE}[mqtt]\nport = 1\nport = 2\n"),
        &[(11, 1, "", "invalid TOML: duplicate key")],
    );
}

#[test]
fn unknown_keys_and_tables_are_reported_with_suggestions() {
    let buad = format!("unknown key `buad` (expected one of: {GATE_KEYS_LIST}); did you mean `baud`?");
    let cases: &[(&str, String, &[ErrorAt])] = &[
        (
            "typo in devices.gate",
            with_base("[devices.gate]\ndriver = \"modbus-rtu\"\nport = \"/dev/gate-io\"\nbuad = 9600\n"),
            &[(
                12,
                1,
                "devices.gate.buad",
                buad.as_str(),
            )],
        ),
        (
            "unknown key without a close match",
            "[site]\nid = \"heshan-c03\"\nname = \"Heshan\"\n[gate]\nid = \"east-1\"\n[store]\npath = \"/db\"\n[identity]\nhmac_key_file = \"/k\"\n"
                .to_owned(),
            &[(3, 1, "site.name", "unknown key `name` (expected one of: id, utc_offset)")],
        ),
        (
            "misspelt table",
            with_base("[mqqt]\nhost = \"10.0.0.1\"\n"),
            &[(
                9,
                2,
                "mqqt",
                "unknown table `mqqt` (expected one of: site, gate, store, mqtt, identity, devices, policy, passes, alerts, control, metrics, health, platform); did you mean `mqtt`?",
            )],
        ),
        (
            "device not supported",
            with_base("[devices.rfid]\nport = \"/dev/rfid\"\n"),
            &[(
                9,
                10,
                "devices.rfid",
                "unknown table `rfid` (expected one of: id_card, gate, qr_scanner, plate_reader, camera)",
            )],
        ),
        (
            "top-level key",
            format!("log_levl = \"debug\"\n{BASE}"),
            &[(1, 1, "log_levl", "unknown key `log_levl` (expected one of: site, gate, store, mqtt, identity, devices, policy, passes, alerts, control, metrics, health, platform)")],
        ),
        (
            "case matters",
            with_base("[mqtt]\nPort = 1883\n"),
            &[(
                10,
                1,
                "mqtt.Port",
                "unknown key `Port` (expected one of: host, port, client_id, topic_prefix, keep_alive_s); did you mean `port`?",
            )],
        ),
        (
            "inside an inline table",
            with_base("[devices]\nid_card = { port = \"/dev/gate-idcard\", bauds = 9600 }\n"),
            &[(
                10,
                40,
                "devices.id_card.bauds",
                "unknown key `bauds` (expected one of: port, baud, poll_interval_ms, side); did you mean `baud`?",
            )],
        ),
    ];
    for (name, text, expected) in cases {
        assert_errors(name, text, expected);
    }
}

#[test]
fn each_kind_of_bad_value_is_pinned_to_its_position() {
    let device_gate = |extra: &str| {
        with_base(&format!("[devices.gate]\ndriver = \"modbus-rtu\"\nport = \"/dev/gate-io\"\n{extra}\n"))
    };
    let gate = |extra: &str| {
        format!(
            "[site]\nid = \"heshan-c03\"\n[gate]\nid = \"east-1\"\n{extra}\n[store]\npath = \"/db\"\n[identity]\nhmac_key_file = \"/k\"\n"
        )
    };
    let cases: Vec<(&str, String, Vec<ErrorAt>)> = vec![
        // Wrong types.
        (
            "string for integer",
            with_base("[mqtt]\nport = \"1883\"\n"),
            vec![(10, 8, "mqtt.port", "expected an integer from 1 to 65535, found string \"1883\"")],
        ),
        (
            "string for boolean",
            gate("flexible = \"yes\""),
            vec![(5, 12, "gate.flexible", "expected a boolean (true or false), found string \"yes\"")],
        ),
        (
            "float for integer",
            device_gate("unlock_ms = 500.0"),
            vec![(12, 13, "devices.gate.unlock_ms", "expected an integer from 50 to 60000, found float 500")],
        ),
        (
            "integer for string",
            with_base("[mqtt]\nhost = 127\n"),
            vec![(10, 8, "mqtt.host", "expected a string, found integer 127")],
        ),
        (
            "string for table",
            "store = \"/var/lib/gated/gated.db\"\n[site]\nid = \"heshan-c03\"\n[gate]\nid = \"east-1\"\n[identity]\nhmac_key_file = \"/k\"\n"
                .to_owned(),
            vec![(1, 9, "store", "expected a table, found string \"/var/lib/gated/gated.db\"")],
        ),
        (
            "array of tables for table",
            with_base("[[mqtt]]\nport = 1883\n"),
            vec![(9, 1, "mqtt", "expected a table, found an array of tables")],
        ),
        // Policy, passes and the newer device sections.
        (
            "unknown category in a policy",
            with_base("[policy.wartime]\nallowed_categories = [\"resident\", \"tourist\"]\n"),
            vec![(10, 35, "policy.wartime.allowed_categories", "expected \"resident\", \"worker\" or \"visitor\", found \"tourist\"")],
        ),
        (
            "policy categories not an array",
            with_base("[policy.normal]\nhealth_required_for = \"resident\"\n"),
            vec![(10, 23, "policy.normal.health_required_for", "expected an array of strings, found string \"resident\"")],
        ),
        (
            "unknown policy key",
            with_base("[policy.sporadic]\nvisitor_pass = true\n"),
            vec![(
                10,
                1,
                "policy.sporadic.visitor_pass",
                "unknown key `visitor_pass` (expected one of: allowed_categories, visitor_pass_required, enforce_time_windows, health_required_for, health)",
            )],
        ),
        (
            "short platform key",
            with_base("[passes]\nplatform_keys = [\"abcd\"]\n"),
            vec![(10, 18, "passes.platform_keys", "expected an Ed25519 public key as 64 hex characters, found 4 characters")],
        ),
        (
            "anti-passback misspelt",
            gate("anti_passback = \"pared\""),
            vec![(
                5,
                17,
                "gate.anti_passback",
                "expected \"off\", \"paired\" or \"timed\", found \"pared\"; did you mean \"paired\"?",
            )],
        ),
        (
            "qr terminator",
            with_base("[devices.qr_scanner]\nport = \"/dev/qr\"\nterminator = \"newline\"\n"),
            vec![(
                11,
                14,
                "devices.qr_scanner.terminator",
                "expected \"cr\", \"lf\", \"crlf\", \"tab\" or \"none\", found \"newline\"",
            )],
        ),
        (
            "plate confidence out of range",
            with_base("[devices.plate_reader]\nport = \"/dev/plate\"\nmin_confidence = 1.5\n"),
            vec![(11, 18, "devices.plate_reader.min_confidence", "expected a number from 0.0 to 1.0, found 1.5")],
        ),
        (
            "reader side",
            with_base("[devices.id_card]\nport = \"/dev/idcard\"\nside = \"inside\"\n"),
            vec![(11, 8, "devices.id_card.side", "expected \"entry\" or \"exit\", found \"inside\"")],
        ),
        // Values outside their set.
        (
            "misspelt unlock mode",
            device_gate("unlock_mode = \"pluse\""),
            vec![(12, 15, "devices.gate.unlock_mode", "expected \"pulse\", \"daemon_timed\", \"level\" or \"board_timed\", found \"pluse\"; did you mean \"pulse\"?")],
        ),
        (
            "unknown direction",
            gate("direction = \"in\""),
            vec![(5, 13, "gate.direction", "expected \"entry\", \"exit\" or \"both\", found \"in\"")],
        ),
        (
            "unknown lane",
            gate("lane = \"car\""),
            vec![(5, 8, "gate.lane", "expected \"pedestrian\" or \"vehicle\", found \"car\"")],
        ),
        (
            "unknown driver",
            with_base("[devices.gate]\ndriver = \"modbus-tcp\"\nport = \"/dev/gate-io\"\n"),
            vec![(10, 10, "devices.gate.driver", "expected \"modbus-rtu\", found \"modbus-tcp\"")],
        ),
        (
            "unsupported baud",
            device_gate("baud = 9601"),
            vec![(12, 8, "devices.gate.baud", "expected one of 9600, 19200, 38400, 57600, 115200, found 9601")],
        ),
        // Integers out of range.
        (
            "port too big",
            with_base("[mqtt]\nport = 70000\n"),
            vec![(10, 8, "mqtt.port", "expected an integer from 1 to 65535, found 70000")],
        ),
        (
            "unit id zero",
            device_gate("unit_id = 0"),
            vec![(12, 11, "devices.gate.unit_id", "expected an integer from 1 to 247, found 0")],
        ),
        (
            "negative coil",
            device_gate("unlock_exit_coil = -1"),
            vec![(12, 20, "devices.gate.unlock_exit_coil", "expected an integer from 0 to 65535, found -1")],
        ),
        (
            "card poll too fast",
            with_base("[devices.id_card]\nport = \"/dev/gate-idcard\"\npoll_interval_ms = 10\n"),
            vec![(11, 20, "devices.id_card.poll_interval_ms", "expected an integer from 50 to 10000, found 10")],
        ),
        (
            "keep alive too short",
            with_base("[mqtt]\nkeep_alive_s = 1\n"),
            vec![(10, 16, "mqtt.keep_alive_s", "expected an integer from 5 to 3600, found 1")],
        ),
        // Strings with a shape.
        (
            "site id with a slash",
            "[site]\nid = \"heshan/c03\"\n[gate]\nid = \"east-1\"\n[store]\npath = \"/db\"\n[identity]\nhmac_key_file = \"/k\"\n"
                .to_owned(),
            vec![(
                2,
                6,
                "site.id",
                "invalid site id \"heshan/c03\": may only contain ASCII letters, digits, '-', '_' and '.' (found '/')",
            )],
        ),
        (
            "empty gate id",
            gate("").replace("id = \"east-1\"", "id = \"\""),
            vec![(4, 6, "gate.id", "invalid gate id \"\": must not be empty")],
        ),
        (
            "utc offset as a number",
            "[site]\nid = \"heshan-c03\"\nutc_offset = \"8\"\n[gate]\nid = \"east-1\"\n[store]\npath = \"/db\"\n[identity]\nhmac_key_file = \"/k\"\n"
                .to_owned(),
            vec![(3, 14, "site.utc_offset", "invalid UTC offset \"8\": expected a UTC offset such as +08:00")],
        ),
        (
            "topic prefix with wildcard",
            with_base("[mqtt]\ntopic_prefix = \"village/#\"\n"),
            vec![(
                10,
                16,
                "mqtt.topic_prefix",
                "expected a topic prefix without the MQTT wildcards '+' and '#', found \"village/#\"",
            )],
        ),
        (
            "topic prefix with trailing slash",
            with_base("[mqtt]\ntopic_prefix = \"village/\"\n"),
            vec![(10, 16, "mqtt.topic_prefix", "expected a topic prefix without a leading or trailing '/', found \"village/\"")],
        ),
        (
            "empty topic prefix",
            with_base("[mqtt]\ntopic_prefix = \"\"\n"),
            vec![(10, 16, "mqtt.topic_prefix", "expected a non-empty topic prefix, found \"\"")],
        ),
        (
            "empty client id",
            with_base("[mqtt]\nclient_id = \"\"\n"),
            vec![(10, 13, "mqtt.client_id", "expected a client id of 1 to 128 characters, found 0 characters")],
        ),
        (
            "client id too long",
            with_base(&format!("[mqtt]\nclient_id = \"{}\"\n", "c".repeat(129))),
            vec![(10, 13, "mqtt.client_id", "expected a client id of 1 to 128 characters, found 129 characters")],
        ),
        (
            "empty host",
            with_base("[mqtt]\nhost = \"\"\n"),
            vec![(10, 8, "mqtt.host", "expected a host name or IP address, found \"\"")],
        ),
        (
            "empty path",
            BASE.replace("path = \"/var/lib/gated/gated.db\"", "path = \"\""),
            vec![(6, 8, "store.path", "expected a non-empty path, found \"\"")],
        ),
        (
            "reader and gate on one serial port",
            with_base(
                "[devices.id_card]\nport = \"/dev/ttyUSB0\"\n[devices.gate]\ndriver = \"modbus-rtu\"\nport = \"/dev/ttyUSB0\"\n",
            ),
            vec![(
                13,
                8,
                "devices.gate.port",
                "expected a serial port other than the ID card reader's, found /dev/ttyUSB0 (also `devices.id_card.port`)",
            )],
        ),
    ];
    for (name, text, expected) in &cases {
        assert_errors(name, text, expected);
    }
}

#[test]
fn missing_required_keys_point_at_their_table_or_line_one() {
    let cases: &[(&str, String, &[ErrorAt])] = &[
        (
            "site without id",
            "[gate]\nid = \"east-1\"\n[store]\npath = \"/db\"\n\n[site]\nutc_offset = \"+08:00\"\n[identity]\nhmac_key_file = \"/k\"\n"
                .to_owned(),
            &[(6, 1, "site.id", "missing required key `id` in `[site]`")],
        ),
        (
            "no store table",
            BASE.replace("[store]\npath = \"/var/lib/gated/gated.db\"\n", ""),
            &[(1, 1, "store", "missing required table `[store]` (it must set `path`)")],
        ),
        (
            "empty file",
            String::new(),
            &[
                (1, 1, "site", "missing required table `[site]` (it must set `id`)"),
                (1, 1, "gate", "missing required table `[gate]` (it must set `id`)"),
                (1, 1, "store", "missing required table `[store]` (it must set `path`)"),
                (1, 1, "identity", "missing required table `[identity]` (it must set `hmac_key_file`)"),
            ],
        ),
        (
            "gate device without driver and port",
            with_base("[devices.gate]\nbaud = 9600\n"),
            &[
                (9, 1, "devices.gate.driver", "missing required key `driver` in `[devices.gate]`"),
                (9, 1, "devices.gate.port", "missing required key `port` in `[devices.gate]`"),
            ],
        ),
        (
            "id card reader without port",
            with_base("[devices.id_card]\nbaud = 9600\n"),
            &[(9, 1, "devices.id_card.port", "missing required key `port` in `[devices.id_card]`")],
        ),
    ];
    for (name, text, expected) in cases {
        assert_errors(name, text, expected);
    }
}

#[test]
fn all_errors_of_a_file_are_reported_together_in_file_order() {
    let text = r#"[site]
id = "heshan/c03"
utc_ofset = "+08:00"

[gate]
id = "east-1"
lane = "bike"

[mqtt]
port = 0
keep_alive_s = "30"

[identity]
hmac_key_file = "/etc/gated/site.key"

[devices.gate]
driver = "modbus-rtu"
port = "/dev/gate-io"
unlock_mode = "pluse"
"#;
    assert_errors(
        "many",
        text,
        &[
            (1, 1, "store", "missing required table `[store]` (it must set `path`)"),
            (
                2,
                6,
                "site.id",
                "invalid site id \"heshan/c03\": may only contain ASCII letters, digits, '-', '_' and '.' (found '/')",
            ),
            (
                3,
                1,
                "site.utc_ofset",
                "unknown key `utc_ofset` (expected one of: id, utc_offset); did you mean `utc_offset`?",
            ),
            (7, 8, "gate.lane", "expected \"pedestrian\" or \"vehicle\", found \"bike\""),
            (10, 8, "mqtt.port", "expected an integer from 1 to 65535, found 0"),
            (11, 16, "mqtt.keep_alive_s", "expected an integer from 5 to 3600, found string \"30\""),
            (
                19,
                15,
                "devices.gate.unlock_mode",
                "expected \"pulse\", \"daemon_timed\", \"level\" or \"board_timed\", found \"pluse\"; did you mean \"pulse\"?",
            ),
        ],
    );
}

#[test]
fn defaults_fill_every_optional_key() {
    let config = ok(BASE);
    assert_eq!(config.source, Path::new(FILE));
    assert_eq!(config.site.id.as_str(), "heshan-c03");
    assert_eq!(config.site.utc_offset, UtcOffset::CHINA);
    assert_eq!(config.gate.id.as_str(), "east-1");
    assert_eq!(config.gate.lane, Lane::Pedestrian);
    assert_eq!(config.gate.direction, Direction::Entry);
    assert!(!config.gate.flexible);
    assert_eq!(config.mqtt.host, "127.0.0.1");
    assert_eq!(config.mqtt.port, 1883);
    assert_eq!(config.mqtt.client_id, "gated-heshan-c03-east-1");
    assert_eq!(config.mqtt.topic_prefix, "village");
    assert_eq!(config.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(config.devices.id_card, None);
    assert_eq!(config.devices.gate, None);

    let config = ok(&with_base(
        "[devices.id_card]\nport = \"/dev/gate-idcard\"\n[devices.gate]\ndriver = \"modbus-rtu\"\nport = \"/dev/gate-io\"\n",
    ));
    assert_eq!(
        config.devices.id_card,
        Some(IdCardConfig {
            port: PathBuf::from("/dev/gate-idcard"),
            baud: 115_200,
            poll_interval: Duration::from_millis(300),
            side: None,
        })
    );
    assert_eq!(
        config.devices.gate,
        Some(GateIoConfig {
            driver: GateDriver::ModbusRtu,
            port: PathBuf::from("/dev/gate-io"),
            baud: 9600,
            unit_id: 1,
            unlock_entry_coil: 0,
            unlock_exit_coil: 1,
            unlock_mode: UnlockMode::Pulse,
            unlock: Duration::from_millis(500),
            passage_entry_input: 0,
            passage_exit_input: 1,
            poll_interval: Duration::from_millis(100),
            fire_alarm_input: None,
            fire_alarm_normally_closed: true,
            io_loss_is_fire_alarm: false,
            fire_alarm_io_loss: Duration::from_millis(5000),
            beam_input: None,
            intrusion_input: None,
            green_lamp_coil: None,
            red_lamp_coil: None,
            buzzer_coil: None,
            indicator: Duration::from_millis(2000),
            pass_timeout: Duration::from_millis(10_000),
            held_open: Duration::from_millis(30_000),
        })
    );

    // A level unlock stays open longer by default; an explicit value wins.
    let level =
        ok(&with_base("[devices.gate]\ndriver = \"modbus-rtu\"\nport = \"/dev/gate-io\"\nunlock_mode = \"level\"\n"));
    assert_eq!(level.devices.gate.map(|g| g.unlock), Some(Duration::from_millis(5000)));
    let level = ok(&with_base(
        "[devices.gate]\ndriver = \"modbus-rtu\"\nport = \"/dev/gate-io\"\nunlock_mode = \"level\"\nunlock_ms = 800\n",
    ));
    assert_eq!(level.devices.gate.map(|g| g.unlock), Some(Duration::from_millis(800)));

    // An explicit client id is kept as written.
    let named = ok(&with_base("[mqtt]\nclient_id = \"box-17\"\n"));
    assert_eq!(named.mqtt.client_id, "box-17");
}

#[test]
fn gate_signals_are_wired_only_when_named() {
    let gate =
        |extra: &str| with_base(&format!("[devices.gate]\ndriver = \"modbus-rtu\"\nport = \"/dev/gate-io\"\n{extra}"));
    let config = ok(&gate(
        "fire_alarm_input = 4\nfire_alarm_normally_closed = false\nio_loss_is_fire_alarm = true\n\
         fire_alarm_io_loss_ms = 8000\nbeam_input = 2\nintrusion_input = 3\ngreen_lamp_coil = 2\n\
         red_lamp_coil = 3\nbuzzer_coil = 4\nindicator_ms = 1500\npass_timeout_ms = 6000\nheld_open_ms = 20000\n",
    ));
    let io = config.devices.gate.expect("a gate");
    assert_eq!((io.fire_alarm_input, io.beam_input, io.intrusion_input), (Some(4), Some(2), Some(3)));
    assert_eq!((io.green_lamp_coil, io.red_lamp_coil, io.buzzer_coil), (Some(2), Some(3), Some(4)));
    assert!(!io.fire_alarm_normally_closed);
    assert!(io.io_loss_is_fire_alarm);
    assert_eq!(io.fire_alarm_io_loss, Duration::from_millis(8000));
    assert_eq!(
        (io.indicator, io.pass_timeout, io.held_open),
        (Duration::from_millis(1500), Duration::from_millis(6000), Duration::from_millis(20_000))
    );

    // One channel, one signal: coils and inputs are separate address spaces.
    assert_errors(
        "lamp on the unlock relay",
        &gate("green_lamp_coil = 0\nbuzzer_coil = 1\nbeam_input = 0\n"),
        &[
            (12, 19, "devices.gate.green_lamp_coil", "expected a coil other than `unlock_entry_coil`'s, found 0"),
            (13, 15, "devices.gate.buzzer_coil", "expected a coil other than `unlock_exit_coil`'s, found 1"),
            (14, 14, "devices.gate.beam_input", "expected an input other than `passage_entry_input`'s, found 0"),
        ],
    );
    assert_errors(
        "bad new values",
        &gate("fire_alarm_input = -1\nfire_alarm_normally_closed = \"yes\"\npass_timeout_ms = 100\n"),
        &[
            (12, 20, "devices.gate.fire_alarm_input", "expected an integer from 0 to 65535, found -1"),
            (
                13,
                30,
                "devices.gate.fire_alarm_normally_closed",
                "expected a boolean (true or false), found string \"yes\"",
            ),
            (14, 19, "devices.gate.pass_timeout_ms", "expected an integer from 500 to 600000, found 100"),
        ],
    );
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let text = r#"[site]
id = "heshan-c03"
[gate]
id = "east-1"
[store]
path = "data/gated.db"
[identity]
hmac_key_file = "./keys/site.key"
[devices.id_card]
port = "idcard"
[devices.gate]
driver = "modbus-rtu"
port = "/dev/gate-io"
"#;
    let config = ok(text);
    assert_eq!(config.store.path, Path::new("/etc/gated/data/gated.db"));
    assert_eq!(config.identity.hmac_key_file, Path::new("/etc/gated/keys/site.key"));
    assert_eq!(config.devices.id_card.map(|c| c.port), Some(PathBuf::from("/etc/gated/idcard")));
    assert_eq!(config.devices.gate.map(|g| g.port), Some(PathBuf::from("/dev/gate-io")));

    // A config named relative to the working directory still yields absolute paths.
    let config = parse(Path::new("gated.toml"), text).expect("valid");
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(config.store.path, cwd.join("data/gated.db"));
    assert!(config.identity.hmac_key_file.is_absolute());
}

#[test]
fn load_reports_an_unreadable_file_without_a_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml");
    let errors = load(&path).expect_err("missing file");
    assert_eq!(errors.0.len(), 1);
    let error = &errors.0[0];
    assert_eq!((error.line, error.column, error.key.as_deref()), (None, None, None));
    assert!(
        error.to_string().starts_with(&format!("{}: cannot read the configuration file: ", path.display())),
        "{error}"
    );

    let path = dir.path().join("gated.toml");
    std::fs::write(&path, with_base("[mqtt]\nport = 0\n")).expect("write");
    let errors = load(&path).expect_err("bad port");
    assert_eq!(errors.0[0].file, path);
    assert_eq!(errors.0[0].line, Some(10));
}

#[test]
fn a_file_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gated.toml");
    // A GBK-encoded 张 (0xD5 0xC5) in a comment of line 3, after "# 门 ":
    // the column counts characters, not bytes.
    let mut bytes = b"[site]\nid = \"x\"\n# \xe9\x97\xa8 ".to_vec();
    bytes.extend([0xD5, 0xC5]);
    bytes.extend(b"\n");
    std::fs::write(&path, &bytes).expect("write");
    let errors = load(&path).expect_err("not UTF-8");
    assert_eq!(errors.0.len(), 1, "{errors}");
    let error = &errors.0[0];
    assert_eq!((error.line, error.column, error.key.as_deref()), (Some(3), Some(5), None), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "{}:3:5: the file is not UTF-8: byte 0xd5 cannot start or continue a character here; save it as UTF-8",
            path.display()
        )
    );
    // A truncated character at the very end of the file.
    std::fs::write(&path, b"[site]\nid = \"\xe9\x97").expect("write");
    let errors = load(&path).expect_err("cut character");
    assert_eq!((errors.0[0].line, errors.0[0].column), (Some(2), Some(7)), "{errors}");
}

#[test]
fn board_timed_unlocks_and_the_input_span() {
    let gate =
        |extra: &str| with_base(&format!("[devices.gate]\ndriver = \"modbus-rtu\"\nport = \"/dev/gate-io\"\n{extra}"));
    let io = ok(&gate("unlock_mode = \"board_timed\"\n")).devices.gate.expect("a gate");
    assert_eq!((io.unlock_mode, io.unlock), (UnlockMode::BoardTimed, Duration::from_millis(500)));
    assert!(io.unlock_mode.board_timed());
    let io = ok(&gate("unlock_mode = \"daemon_timed\"\n")).devices.gate.expect("a gate");
    assert_eq!(io.unlock_mode, UnlockMode::Pulse);
    // The timed pulse goes to 0x0200 + coil: the coil must leave room.
    ok(&gate("unlock_mode = \"board_timed\"\nunlock_entry_coil = 65023\n"));
    assert_errors(
        "board-timed coil too high",
        &gate("unlock_mode = \"board_timed\"\nunlock_exit_coil = 65024\n"),
        &[(
            13,
            20,
            "devices.gate.unlock_exit_coil",
            "expected a coil of 0-65023 with unlock_mode = \"board_timed\" (the timed pulse goes to 0x0200 + coil), found 65024",
        )],
    );
    ok(&gate("unlock_mode = \"pulse\"\nunlock_exit_coil = 65535\n"));

    // One FC02 read covers every wired input: at most 2000 of them.
    ok(&gate("passage_entry_input = 100\npassage_exit_input = 2099\n"));
    assert_errors(
        "inputs 0 and 65535 (a span that overflows u16)",
        &gate("passage_entry_input = 0\npassage_exit_input = 65535\n"),
        &[(
            13,
            22,
            "devices.gate.passage_exit_input",
            "expected the wired inputs within 2000 of each other (one FC02 read covers them all), found `passage_entry_input` = 0 and 65535 here: a span of 65536",
        )],
    );
    assert_errors(
        "a fire contact far from the passage inputs",
        &gate("fire_alarm_input = 2000\n"),
        &[(
            12,
            20,
            "devices.gate.fire_alarm_input",
            "expected the wired inputs within 2000 of each other (one FC02 read covers them all), found `passage_entry_input` = 0 and 2000 here: a span of 2001",
        )],
    );
}

fn example_path() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/gated.example.toml"))
}

#[test]
fn example_config_parses_without_errors() {
    let config = match load(example_path()) {
        Ok(config) => config,
        Err(errors) => panic!("the example config must be valid:\n{errors}"),
    };
    assert_eq!(config.site.id.as_str(), "heshan-c03");
    assert_eq!(config.gate.id.as_str(), "east-1");
    assert_eq!(config.store.path, Path::new("/var/lib/gated/gated.db"));
    assert_eq!(config.identity.hmac_key_file, Path::new("/etc/gated/site.key"));
    assert_eq!(config.mqtt.client_id, "gated-heshan-c03-east-1");
    assert_eq!(config.devices.id_card.map(|c| c.port), Some(PathBuf::from("/dev/gate-idcard")));
    assert_eq!(config.devices.gate.map(|g| g.port), Some(PathBuf::from("/dev/gate-io")));
}

#[test]
fn example_config_documents_every_key() {
    let text = std::fs::read_to_string(example_path()).expect("example");
    let doc = Document::parse(text.as_str()).expect("toml");
    for &(table, keys) in SCHEMA {
        let mut item = doc.as_item();
        for part in table.split('.').filter(|p| !p.is_empty()) {
            item = item.get(part).unwrap_or_else(|| panic!("example lacks [{table}]"));
        }
        for key in keys {
            assert!(item.get(key).is_some(), "example lacks `{key}` in [{table}]");
        }
    }
    // Every `key = value` line has a comment right above it.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        assert!(i > 0 && lines[i - 1].trim_start().starts_with('#'), "line {} has no comment: {line}", i + 1);
    }
}

#[test]
fn health_rules_per_mode_and_category() {
    use gate_engine::{HealthFallback, HealthRules};
    let config = ok(BASE);
    assert_eq!(config.policy.wartime.health_rules.resident.fallback, HealthFallback::Refuse);
    assert_eq!(config.policy.sporadic.health_rules.worker.nat_window_h, 72);
    assert_eq!(config.health.online_timeout, Duration::from_millis(800));
    let custom = ok(&with_base(
        "[policy.wartime.health]\nnat_window_h = 24\nfallback = \"accept_stale\"\naccept_stale_max_h = 12\n\
         [policy.wartime.health.visitor]\nallowed_colours = [\"green\", \"yellow\"]\nmin_doses = 3\n",
    ));
    let w = &custom.policy.wartime.health_rules;
    assert_eq!(w.resident.nat_window_h, 24);
    assert_eq!(w.resident.fallback, HealthFallback::AcceptStale { max_age_h: 12 });
    assert_eq!(w.visitor.nat_window_h, 24, "the mode's table applies under the subtable");
    assert_eq!(w.visitor.min_doses, 3);
    assert_eq!(w.resident.min_doses, HealthRules::default().min_doses);
    assert_eq!(w.visitor.allowed_colours.len(), 2);
    assert_errors(
        "bad colour",
        &with_base("[policy.sporadic.health.worker]\nallowed_colours = [\"blue\"]\n"),
        &[(
            10,
            20,
            "policy.sporadic.health.worker.allowed_colours",
            "expected \"green\", \"yellow\", \"red\" or \"unassessed\", found \"blue\"",
        )],
    );
    assert_errors(
        "window out of range",
        &with_base("[policy.normal.health]\nnat_window_h = 0\n"),
        &[(10, 16, "policy.normal.health.nat_window_h", "expected an integer from 1 to 720, found 0")],
    );
}

#[test]
fn policies_default_per_mode_and_take_overrides() {
    let config = ok(BASE);
    assert_eq!(config.policy.normal, Policy::default_for(Mode::Normal));
    assert_eq!(config.policy.wartime, Policy::default_for(Mode::Wartime));
    assert!(config.policy.version.starts_with("auto-"), "{}", config.policy.version);
    let custom = ok(&with_base(
        "[policy]\nversion = \"2026-11-a\"\n[policy.wartime]\nallowed_categories = [\"resident\"]\nhealth_required_for = []\n",
    ));
    assert_eq!(custom.policy.version, "2026-11-a");
    assert_eq!(custom.policy.wartime.allowed_categories, CategorySet::of(&[Category::Resident]));
    assert_eq!(custom.policy.wartime.health_required_for, CategorySet::NONE);
    assert_eq!(custom.policy.for_mode(Mode::Sporadic), &Policy::default_for(Mode::Sporadic));
    // The derived version follows the content.
    let other = ok(&with_base("[policy.normal]\nvisitor_pass_required = false\n"));
    assert_ne!(other.policy.version, config.policy.version);
    assert_eq!(ok(BASE).policy.version, config.policy.version, "stable");
    assert_eq!(config.gate.anti_passback, AntiPassback::Off);
    let timed =
        ok(&BASE.replace("id = \"east-1\"\n", "id = \"east-1\"\nanti_passback = \"timed\"\nanti_passback_s = 45\n"));
    assert_eq!(timed.gate.anti_passback, AntiPassback::Timed { window_ms: 45_000 });
}

#[test]
fn a_camera_takes_exactly_one_source() {
    let one = ok(&with_base("[devices.camera]\nframes_dir = \"frames\"\ninterval_ms = 50\n"));
    let camera = one.devices.camera.expect("camera");
    assert_eq!(camera.source, CameraSource::FramesDir(PathBuf::from("/etc/gated/frames")));
    assert_eq!(camera.interval, Duration::from_millis(50));
    assert_errors(
        "no source",
        &with_base("[devices.camera]\ninterval_ms = 50\n"),
        &[(9, 1, "devices.camera", "expected one of `device`, `snapshot_file` or `frames_dir`")],
    );
    assert_errors(
        "two sources",
        &with_base("[devices.camera]\ndevice = 0\nframes_dir = \"f\"\n"),
        &[(9, 1, "devices.camera", "expected only one camera source, found device, frames_dir")],
    );
}

#[test]
fn suggestions_need_a_close_match() {
    assert_eq!(suggest("buad", GATE_IO_KEYS), Some("baud"));
    assert_eq!(suggest("unlock_m", GATE_IO_KEYS), Some("unlock_ms"));
    assert_eq!(suggest("x", SITE_KEYS), None);
    assert_eq!(suggest("qr_scaner", DEVICES_KEYS), Some("qr_scanner"));
    assert_eq!(suggest("rfid", DEVICES_KEYS), None);
    assert_eq!(crate::diag::edit_distance("pluse", "pulse"), 2);
    assert_eq!(crate::diag::edit_distance("", "abc"), 3);
    assert_eq!(position("a\nbé c", 6), (2, 4));
}

#[test]
fn control_socket_defaults_to_the_state_folder() {
    let config = ok(BASE);
    assert_eq!(config.control.socket, Path::new("/var/lib/gated/gated.sock"));
    assert_eq!(config.control.group, None);
    let custom = ok(&with_base("[control]\nsocket = \"run/ctl.sock\"\ngroup = \"gate-techs\"\n"));
    assert_eq!(custom.control.socket, Path::new("/etc/gated/run/ctl.sock"), "relative to the config's folder");
    assert_eq!(custom.control.group.as_deref(), Some("gate-techs"));
    assert_errors(
        "bad group",
        &with_base("[control]\ngroup = \"-x y\"\n"),
        &[(
            10,
            9,
            "control.group",
            "expected a group name (letters, digits, `_`, `-`, `.`; at most 32), found \"-x y\"",
        )],
    );
    let long = format!("/{}/gated.sock", "d".repeat(100));
    let errors =
        parse(Path::new(FILE), &with_base(&format!("[control]\nsocket = \"{long}\"\n"))).expect_err("too long");
    assert!(errors.to_string().contains("at most 107 bytes"), "{errors}");
}

#[test]
fn metrics_are_off_by_default_and_loopback_unless_allowed() {
    assert_eq!(ok(BASE).metrics, MetricsConfig::default());
    let on = ok(&with_base("[metrics]\nlisten = \"127.0.0.1:9464\"\n"));
    assert_eq!(on.metrics.listen, Some("127.0.0.1:9464".parse().expect("addr")));
    let bare = ok(&with_base("[metrics]\nlisten = \"9464\"\n"));
    assert_eq!(bare.metrics.listen, Some("127.0.0.1:9464".parse().expect("addr")), "a bare port is loopback");
    let v6 = ok(&with_base("[metrics]\nlisten = \"[::1]:9464\"\n"));
    assert_eq!(v6.metrics.listen, Some("[::1]:9464".parse().expect("addr")));
    assert_errors(
        "remote without allow_remote",
        &with_base("[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
        &[(
            10,
            10,
            "metrics.listen",
            "expected a loopback address such as \"127.0.0.1:9464\", found \"0.0.0.0:9464\"; the endpoint has no \
             authentication: set `allow_remote = true` to expose it anyway",
        )],
    );
    let remote = ok(&with_base("[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n"));
    assert!(remote.metrics.allow_remote);
    assert_errors(
        "not an address",
        &with_base("[metrics]\nlisten = \"localhost\"\n"),
        &[(
            10,
            10,
            "metrics.listen",
            "expected an address and port such as \"127.0.0.1:9464\" or a port, found \"localhost\"",
        )],
    );
    assert_errors(
        "port 0",
        &with_base("[metrics]\nlisten = \"127.0.0.1:0\"\n"),
        &[(10, 10, "metrics.listen", "expected a port from 1 to 65535, found \"127.0.0.1:0\"")],
    );
}

#[test]
fn platform_keys_defaults_and_the_deprecated_pass_keys_folded_in() {
    let config = ok(BASE);
    assert_eq!(config.platform, PlatformConfig::default());
    assert_eq!(config.platform.stale_after, Duration::from_secs(3600));
    assert!(!config.platform.refuse_when_stale);
    assert!(config.envelope_keys().is_empty());
    let a = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    let b = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let config = ok(&with_base(&format!(
        "[passes]\nplatform_keys = [\"{a}\", \"{b}\"]\n[platform]\nsigning_keys = [\"platform-2026:{a}\"]\n\
         stale_after_s = 600\nrefuse_when_stale = true\n"
    )));
    assert_eq!(config.platform.stale_after, Duration::from_secs(600));
    assert!(config.platform.refuse_when_stale);
    let keys: Vec<String> = config.envelope_keys().iter().map(|k| k.to_spec_string()).collect();
    // The configured id wins for a key listed twice; the old-only key gets
    // the derived id.
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], format!("platform-2026:{a}"));
    assert!(keys[1].ends_with(b) && !keys[1].starts_with("platform-2026"), "{keys:?}");
    assert_eq!(config.pass_keys().len(), 2);
}

#[test]
fn bad_platform_signing_keys_are_reported_by_entry() {
    let a = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
    let text = with_base(&format!("[platform]\nsigning_keys = [\"{a}\", \"k1:{a}\", \"k1:{a}\"]\n"));
    let errors = parse(Path::new(FILE), &text).expect_err("bad keys");
    let messages: Vec<String> = errors.0.iter().map(|e| e.message.clone()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].starts_with("expected \"KEYID:HEX\""), "{messages:?}");
    assert_eq!(messages[1], "expected each key id once, found \"k1\" twice");
}
