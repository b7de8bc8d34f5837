//! The names behind each frontend (service, port, kind, policies), published by the agent in
//! `<state-dir>/frontends.json` so that netctl, which reads the pinned maps directly, can show
//! them while the agent is up. The maps stay the source of truth: a missing or stale file only
//! costs the names.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "frontends.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendName {
    /// "namespace/name".
    pub service: String,
    pub port_name: String,
    pub kind: String,
    pub external_traffic_policy: String,
    pub internal_traffic_policy: String,
}

/// Writes the names (frontend "ip:port/PROTO" -> names) atomically: a temporary file, then a
/// rename.
pub fn write(dir: &Path, names: &BTreeMap<String, FrontendName>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(names).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join(FILE))
}

/// Reads the names the agent published, if any.
pub fn read(dir: &Path) -> BTreeMap<String, FrontendName> {
    std::fs::read(dir.join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
