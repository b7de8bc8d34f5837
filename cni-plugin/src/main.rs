//! petrel-cni: called by the container runtime with CNI_* in the environment and the network
//! configuration on stdin. See the crate docs.

use std::io::Read as _;

fn main() {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("petrel-cni: reading stdin: {e}");
    }
    let code = petrel_cni::run(&env, &stdin, &mut std::io::stdout().lock());
    std::process::exit(code);
}
