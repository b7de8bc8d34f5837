use std::path::PathBuf;

use which::which;

/// Rebuild when the bpf-linker binary changes (as aya-template does). bpf-linker is looked up on
/// PATH, then where `cargo xtask setup` installs it.
fn main() {
    let installed = std::env::var_os("PETREL_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/petrel/tools")))
        .map(|t| t.join("bin/bpf-linker"))
        .filter(|p| p.exists());
    match which("bpf-linker").ok().or(installed) {
        Some(p) => println!("cargo:rerun-if-changed={}", p.display()),
        None => println!("cargo:warning=bpf-linker not found: run `cargo xtask setup`"),
    }
}
