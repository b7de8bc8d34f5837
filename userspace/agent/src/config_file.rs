//! The agent's configuration file: YAML whose keys are the long flag names (`node-name`,
//! `routing`, `external-interface`, ...). It is turned into command-line arguments, so clap
//! checks its values exactly as it checks flags. Precedence: flags, then environment variables,
//! then the file, then the defaults.

use std::path::Path;

/// How a flag takes its value, as the file must give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `--flag` alone: `key: true` sets it, `false` leaves it off.
    Switch,
    /// `--flag VALUE`: a scalar.
    Single,
    /// `--flag VALUE` repeatable: a scalar or a list.
    List,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: not YAML: {reason}")]
    Yaml { path: String, reason: String },
    #[error("{path}: the top level must be a mapping of flag names to values")]
    NotMapping { path: String },
    #[error("{path}: unknown key {key:?} (keys are the agent's long flag names: {known})")]
    UnknownKey {
        path: String,
        key: String,
        known: String,
    },
    #[error("{path}: {key}: {reason}")]
    BadValue {
        path: String,
        key: String,
        reason: String,
    },
}

fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The arguments `text` (the file at `path`) stands for. `flags` names every flag the file may
/// set and how; keys for which `given_elsewhere` is true (set by a flag or the environment) are
/// left out, so those win.
pub fn to_args(
    path: &Path,
    text: &str,
    flags: &[(String, Kind)],
    given_elsewhere: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ConfigError> {
    let path = path.display().to_string();
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let map = match doc {
        serde_yaml::Value::Mapping(m) => m,
        // An empty file is an empty configuration.
        serde_yaml::Value::Null => return Ok(Vec::new()),
        _ => return Err(ConfigError::NotMapping { path }),
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let key = scalar(&k).unwrap_or_default();
        let Some((_, kind)) = flags.iter().find(|(name, _)| *name == key) else {
            return Err(ConfigError::UnknownKey {
                path,
                key,
                known: flags
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let bad = |reason: &str| ConfigError::BadValue {
            path: path.clone(),
            key: key.clone(),
            reason: reason.into(),
        };
        let values: Vec<String> = match (&v, kind) {
            (serde_yaml::Value::Sequence(items), Kind::List) => items
                .iter()
                .map(|i| scalar(i).ok_or_else(|| bad("list items must be plain values")))
                .collect::<Result<_, _>>()?,
            (serde_yaml::Value::Sequence(_), _) => return Err(bad("takes one value, not a list")),
            (serde_yaml::Value::Bool(on), Kind::Switch) => {
                if *on && !given_elsewhere(&key) {
                    out.push(format!("--{key}"));
                }
                continue;
            }
            (_, Kind::Switch) => return Err(bad("takes true or false")),
            // `key:` with nothing after it: leave the default.
            (serde_yaml::Value::Null, _) => continue,
            _ => vec![scalar(&v).ok_or_else(|| bad("expects a plain value"))?],
        };
        if given_elsewhere(&key) {
            continue;
        }
        out.extend(values.into_iter().map(|val| format!("--{key}={val}")));
    }
    Ok(out)
}

/// Reads the file at `path` and returns its arguments (see `to_args`).
pub fn read_args(
    path: &Path,
    flags: &[(String, Kind)],
    given_elsewhere: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    to_args(path, &text, flags, given_elsewhere)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<(String, Kind)> {
        [
            ("node-name", Kind::Single),
            ("routing", Kind::Single),
            ("socket-lb", Kind::Single),
            ("pod-mtu", Kind::Single),
            ("external-interface", Kind::List),
            ("cleanup", Kind::Switch),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_string(), k))
        .collect()
    }

    fn args(text: &str, given: &[&str]) -> Result<Vec<String>, ConfigError> {
        to_args(Path::new("agent.yaml"), text, &flags(), |k| {
            given.contains(&k)
        })
    }

    #[test]
    fn keys_become_flags_and_flags_given_elsewhere_win() {
        let text = "node-name: n1\nrouting: vxlan\nsocket-lb: false\npod-mtu: 1400\nexternal-interface: [eth0, eth1]\ncleanup: false\n";
        assert_eq!(
            args(text, &[]).expect("valid"),
            [
                "--node-name=n1",
                "--routing=vxlan",
                "--socket-lb=false",
                "--pod-mtu=1400",
                "--external-interface=eth0",
                "--external-interface=eth1"
            ]
        );
        assert_eq!(
            args(text, &["routing", "external-interface"]).expect("valid"),
            ["--node-name=n1", "--socket-lb=false", "--pod-mtu=1400"]
        );
        assert_eq!(
            args("external-interface: eth0\ncleanup: true\n", &[]).expect("valid"),
            ["--external-interface=eth0", "--cleanup"]
        );
        assert_eq!(args("", &[]).expect("empty"), Vec::<String>::new());
        assert_eq!(args("pod-mtu:\n", &[]).expect("null"), Vec::<String>::new());
    }

    #[test]
    fn bad_files_are_refused_with_the_key_and_the_reason() {
        let unknown = args("node_name: n1\n", &[]).expect_err("unknown key");
        assert!(
            unknown.to_string().contains(
                "agent.yaml: unknown key \"node_name\" (keys are the agent's long flag names: node-name,"
            ),
            "{unknown}"
        );
        let cases = [
            (
                "routing: [native, vxlan]\n",
                "routing: takes one value, not a list",
            ),
            ("cleanup: yes please\n", "cleanup: takes true or false"),
            ("node-name: {a: 1}\n", "node-name: expects a plain value"),
            (
                "external-interface: [[eth0]]\n",
                "list items must be plain values",
            ),
            ("- node-name\n", "the top level must be a mapping"),
            ("node-name: [unclosed\n", "agent.yaml: not YAML"),
        ];
        for (text, want) in cases {
            let e = args(text, &[]).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let missing = read_args(Path::new("/nonexistent/agent.yaml"), &flags(), |_| false)
            .expect_err("missing file");
        assert!(
            missing
                .to_string()
                .starts_with("reading /nonexistent/agent.yaml")
        );
    }
}
