//! Builds `petrel-ebpf` for bpfel-unknown-none with aya-build (cargo-in-cargo) into OUT_DIR, where
//! `datapath.rs` embeds it with `include_bytes_aligned!`.
//!
//! Toolchain: the rustup toolchain named by $PETREL_EBPF_TOOLCHAIN (default "debian-web"), which
//! `cargo xtask setup` links to Debian's rustc-web and its prebuilt core for bpfel-unknown-none
//! (package libstd-rust-web-dev-bpf): no `-Z build-std`, no rust-src.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PETREL_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=PETREL_TOOLS");
    let toolchain = std::env::var("PETREL_EBPF_TOOLCHAIN").unwrap_or_else(|_| "debian-web".into());

    // bpf-linker lives where `cargo xtask setup` installed it; make a plain `cargo build` work
    // after setup without the caller having to extend PATH.
    let tools = std::env::var_os("PETREL_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/petrel/tools")));
    if let Some(bin) = tools
        .map(|t| t.join("bin"))
        .filter(|b| b.join("bpf-linker").exists())
    {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut parts = vec![bin];
        parts.extend(std::env::split_paths(&path));
        let joined = std::env::join_paths(parts).context("join PATH")?;
        // SAFETY: build scripts are single-threaded here.
        unsafe { std::env::set_var("PATH", joined) };
    }

    // aya-ebpf needs #![feature(asm_experimental_arch)]. RUSTC_BOOTSTRAP=1 would make aya-build add
    // `-Z build-std=core` (needs rust-src, which cannot be had here); naming only the crate that
    // needs the feature keeps aya-build on the prebuilt-sysroot path.
    // cargo-fuzz (tests/fuzz) builds with RUSTC_BOOTSTRAP=1 for its sanitizer flags, which reach
    // this script too; the eBPF build still wants only the one gate (`--cfg fuzzing` tells).
    println!("cargo:rerun-if-env-changed=RUSTC_BOOTSTRAP");
    let fuzzing = std::env::var_os("CARGO_CFG_FUZZING").is_some();
    if fuzzing || std::env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY: build scripts are single-threaded here.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    }

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = packages
        .into_iter()
        .find(|p| p.name.as_str() == "petrel-ebpf")
        .ok_or_else(|| anyhow!("petrel-ebpf package not found"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", pkg.manifest_path))?;
    let ebpf = aya_build::Package {
        name: pkg.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(&toolchain))
}
