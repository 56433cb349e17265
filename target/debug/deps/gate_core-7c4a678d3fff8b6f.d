/work/main/target/debug/deps/gate_core-7c4a678d3fff8b6f.d: crates/core/src/lib.rs crates/core/src/date.rs crates/core/src/id_number.rs crates/core/src/identity.rs crates/core/src/ids.rs crates/core/src/key.rs crates/core/src/verdict.rs

/work/main/target/debug/deps/gate_core-7c4a678d3fff8b6f: crates/core/src/lib.rs crates/core/src/date.rs crates/core/src/id_number.rs crates/core/src/identity.rs crates/core/src/ids.rs crates/core/src/key.rs crates/core/src/verdict.rs

crates/core/src/lib.rs:
crates/core/src/date.rs:
crates/core/src/id_number.rs:
crates/core/src/identity.rs:
crates/core/src/ids.rs:
crates/core/src/key.rs:
crates/core/src/verdict.rs:
