//! Compiles the SPIFFE Workload API's `.proto` (proto/workload.proto) with
//! protox, a protobuf compiler in Rust, so no `protoc` is needed to build:
//! the gRPC server and client code, and the encoded file descriptor set
//! that gRPC reflection serves.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    let fds = protox::compile(["workload.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("workload_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
