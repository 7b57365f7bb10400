//! Compiles the .proto files with protox (no system protoc needed) and keeps
//! the descriptor set so the server can serve gRPC reflection from it.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "portcullis/v1/ratelimit.proto",
    "portcullis/v1/auth.proto",
    "portcullis/v1/admin.proto",
    "envoy/service/ratelimit/v3/rls.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=portcullis");
    println!("cargo:rerun-if-changed=envoy");
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("portcullis_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
