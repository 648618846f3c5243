//! Generates the `WorkflowService` server trait (and client) over temporalio-protos' own message
//! types, from the descriptor set that crate exports. No Temporal `.proto` file is copied here.
//! Also generates Norn's own admin protocol (`proto/admin.proto`).

use prost::Message;

const SERVICE_FILE: &str = "temporal/api/workflowservice/v1/service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/admin.proto");
    println!("cargo:rerun-if-changed=proto/internal.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/admin.proto", "proto/internal.proto"], &["proto"])?;

    println!("cargo:rerun-if-env-changed=DEP_TEMPORALIO_PROTOS_DESCRIPTOR_PATH");
    let path = std::env::var("DEP_TEMPORALIO_PROTOS_DESCRIPTOR_PATH")
        .map_err(|_| "temporalio-protos did not export its descriptor set (DEP_TEMPORALIO_PROTOS_DESCRIPTOR_PATH)")?;
    println!("cargo:rerun-if-changed={path}");
    let bytes = std::fs::read(&path)?;
    // Kept whole (services included) for the client SDK's proto-JSON history reader.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("temporal_descriptors.bin"), &bytes)?;
    let mut fds = prost_types::FileDescriptorSet::decode(bytes.as_slice())?;
    let mut found = false;
    for file in &mut fds.file {
        if file.name() == SERVICE_FILE {
            found = true;
        } else {
            file.service.clear();
        }
    }
    if !found {
        return Err(format!("{SERVICE_FILE} is missing from the temporalio-protos descriptor set").into());
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .extern_path(".temporal", "::temporalio_protos::temporal")
        .extern_path(".coresdk", "::temporalio_protos::coresdk")
        .extern_path(".grpc", "::temporalio_protos::grpc")
        .extern_path(".google.rpc", "::temporalio_protos::google::rpc")
        .compile_fds(fds)?;
    Ok(())
}
