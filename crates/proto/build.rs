//! Compiles `proto/gate/v1/*.proto` with protox (pure Rust), so building
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let file = format!("{root}/gate/v1/gate.proto");
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file.as_str()], [root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
