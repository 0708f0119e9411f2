//! Generates the tonic/prost code of `tessera/v1/*.proto` and the encoded
//! file descriptor set that server reflection serves. protoc comes from
//! `protoc-bin-vendored` unless `PROTOC` names one.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["tessera/v1/tessera.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        // prost-build reads PROTOC; this build script is single-threaded.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let config = tonic_prost_build::configure();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    config
        .file_descriptor_set_path(out.join("tessera_v1_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
