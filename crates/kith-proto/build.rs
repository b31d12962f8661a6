//! Compiles every `.proto` under the workspace's `proto/` with protox (pure Rust, so no system
//! `protoc` is needed) and generates prost messages and tonic stubs, plus a file descriptor set
//! for gRPC reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "google/rpc/status.proto",
    "kith/common/v1/common.proto",
    "kith/identity/v1/identity.proto",
    "kith/transport/v1/transport.proto",
    "kith/store/v1/store.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kith_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // No `connect` constructors on the clients (every Kith client is built on
    // kith-service's authenticated channel), which also frees the name for the transport's
    // `Connect` RPC.
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
