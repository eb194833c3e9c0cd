//! Compiles `proto/cohortex/v1/*.proto` with protox (a pure-Rust protobuf compiler, so no
//! `protoc` is needed) and generates prost messages and tonic clients and servers. The
//! encoded descriptor set is written next to them for server reflection. Clients and servers
//! use `crate::codec::CanonicalProstCodec` (see `src/codec.rs`) instead of tonic-prost's codec.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/cohortex/v1/common.proto",
        "proto/cohortex/v1/ledger.proto",
        "proto/cohortex/v1/consent.proto",
        "proto/cohortex/v1/market.proto",
        "proto/cohortex/v1/compute.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("cohortex_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::CanonicalProstCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
