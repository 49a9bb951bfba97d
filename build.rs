//! Generates the gRPC code from `proto/` with the vendored `protoc` (no system
//! protoc needed) and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("notigate_descriptor.bin"))
        .compile_protos(
            &[
                PathBuf::from("proto/notigate/v1/connection.proto"),
                PathBuf::from("proto/notigate/v1/connection_admin.proto"),
                PathBuf::from("proto/notigate/v1/notifier.proto"),
            ],
            &[PathBuf::from("proto"), include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
