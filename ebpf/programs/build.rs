use which::which;

/// Rebuild when the bpf-linker binary changes (as aya-template does).
fn main() {
    let bpf_linker =
        which("bpf-linker").expect("bpf-linker not found in PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
