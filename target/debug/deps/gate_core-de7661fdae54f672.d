/work/main/target/debug/deps/gate_core-de7661fdae54f672.d: crates/core/src/lib.rs crates/core/src/date.rs crates/core/src/id_number.rs crates/core/src/identity.rs crates/core/src/ids.rs crates/core/src/key.rs crates/core/src/verdict.rs

/work/main/target/debug/deps/libgate_core-de7661fdae54f672.rlib: crates/core/src/lib.rs crates/core/src/date.rs crates/core/src/id_number.rs crates/core/src/identity.rs crates/core/src/ids.rs crates/core/src/key.rs crates/core/src/verdict.rs

/work/main/target/debug/deps/libgate_core-de7661fdae54f672.rmeta: crates/core/src/lib.rs crates/core/src/date.rs crates/core/src/id_number.rs crates/core/src/identity.rs crates/core/src/ids.rs crates/core/src/key.rs crates/core/src/verdict.rs

crates/core/src/lib.rs:
crates/core/src/date.rs:
crates/core/src/id_number.rs:
crates/core/src/identity.rs:
crates/core/src/ids.rs:
crates/core/src/key.rs:
crates/core/src/verdict.rs:
