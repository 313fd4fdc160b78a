fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/brick.proto");
    println!("cargo:rerun-if-changed=proto/raft.proto");
    println!("cargo:rerun-if-changed=proto/quota.proto");
    println!("cargo:rerun-if-changed=proto/csi.proto");
    tonic_prost_build::configure().bytes(".").compile_protos(
        &[
            "proto/brick.proto",
            "proto/raft.proto",
            "proto/quota.proto",
            "proto/csi.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
