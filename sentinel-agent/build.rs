//! Builds the kernel programs (`sentinel-ebpf`) with the nightly toolchain and bpf-linker, so a
//! plain `cargo build` produces an agent with its eBPF object embedded.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "sentinel-ebpf")
        .ok_or_else(|| anyhow!("sentinel-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    let toolchain = std::env::var("SENTINEL_BPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    println!("cargo:rerun-if-env-changed=SENTINEL_BPF_TOOLCHAIN");
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
        .context("building the eBPF programs (run scripts/setup.sh if bpf-linker or the nightly toolchain is missing)")
}
