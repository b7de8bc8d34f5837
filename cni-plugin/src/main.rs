//! petrel-cni: called by the container runtime with CNI_* in the environment and the network
//! configuration on stdin. See the crate docs.

use std::io::Read as _;

fn main() {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("petrel-cni: reading stdin: {e}");
    }
    // vars_os: a variable that is not UTF-8 must not panic the plugin (run_os decides).
    let code = petrel_cni::run_os(std::env::vars_os(), &stdin, &mut std::io::stdout().lock());
    std::process::exit(code);
}
