//! The agent's standalone-mode input: one manifest file's YAML text, through the parser
//! (`sources::manifests::parse_file`) and on to what the agent computes from the objects: this
//! node's facts, the desired datapath state (`desired::compute`, and the memo the sync loop
//! uses), the names netctl shows, and the routes to other nodes.
//!
//! Checked: nothing panics; an error names the file and a 1-based line when it has one; the memo
//! gives what a full compute gives, on a first call and on a call with the same objects again.
#![no_main]

use std::{path::Path, sync::Arc};

use libfuzzer_sys::fuzz_target;
use petrel_agent::{
    desired::{self, Memo, NodeFacts, Options},
    node, routing,
    sources::manifests,
};

const FILE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    // The watcher reads files with read_to_string: the parser only ever sees UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = match manifests::parse_file(Path::new(FILE), text) {
        Ok(m) => m,
        Err(e) => {
            assert_eq!(e.file, Path::new(FILE));
            assert!(e.line.is_none_or(|l| l >= 1), "{e}");
            assert!(e.to_string().starts_with(FILE), "{e}");
            return;
        }
    };
    // The agent's sources never hold two services with one namespace/name (the API server's
    // keys; the manifest source refuses the later one, validate.rs): Memo keys services by it,
    // so the comparison below is over what the sources can hand it, the first of each kept.
    let mut ids = std::collections::HashSet::new();
    let services: Vec<_> = m
        .services
        .into_iter()
        .filter(|s| {
            ids.insert((
                s.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                s.metadata.name.clone().unwrap_or_default(),
            ))
        })
        .map(Arc::new)
        .collect();
    let slices: Vec<_> = m.slices.into_iter().map(Arc::new).collect();
    let nodes: Vec<_> = m.nodes.into_iter().map(Arc::new).collect();

    // This node: the first Node of the file, if any (with its InternalIPs and zone).
    let me = nodes
        .first()
        .and_then(|n| n.metadata.name.clone())
        .unwrap_or_else(|| "node-a".to_string());
    let facts = NodeFacts::of(&nodes, &me, &[]);
    for n in &nodes {
        let _ = node::pod_cidr(n);
        let _ = node::zone(n);
    }
    let _ = routing::plan::plan(&nodes, &me, "10.244.0.0/16".parse().ok());

    for maglev in [false, true] {
        let opts = Options { maglev };
        let full = desired::compute(&services, &slices, &facts, opts);
        let mut memo = Memo::default();
        assert_eq!(
            memo.compute(&services, &slices, &facts, opts),
            full,
            "memo, first call"
        );
        assert_eq!(
            memo.compute(&services, &slices, &facts, opts),
            full,
            "memo, same objects again"
        );
        let _ = full.backends();
        let _ = full.frontend_names();
    }
});
