//! The plugin's environment (CNI_COMMAND and friends) as a typed command, checked per verb.

use std::{collections::HashMap, path::PathBuf};

use crate::error::{CniError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The container an ADD, DEL or CHECK is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// Required for ADD and CHECK; DEL tolerates its absence (the runtime may have removed it).
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub verb: Verb,
    pub attachment: Option<Attachment>,
}

/// A container ID is used in file and interface names: `[A-Za-z0-9][A-Za-z0-9_.-]*`, so no path
/// traversal and no separators.
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok || id.len() > 256 {
        return Err(CniError::env(format!(
            "CNI_CONTAINERID {id:?} is not of the form [A-Za-z0-9][A-Za-z0-9_.-]* (at most 256 bytes)"
        )));
    }
    Ok(())
}

/// Linux interface names: 1 to 15 bytes, no '/', no whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(CniError::env(format!(
            "CNI_IFNAME {name:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"
        )));
    }
    Ok(())
}

fn required<'a>(env: &'a HashMap<String, String>, key: &str) -> Result<&'a str> {
    match env.get(key).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::env(format!("{key} is required for this command"))),
    }
}

impl Command {
    pub fn from_env(env: &HashMap<String, String>) -> Result<Command> {
        let verb = match required(env, "CNI_COMMAND")? {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "VERSION" => Verb::Version,
            "STATUS" => Verb::Status,
            "GC" => Verb::Gc,
            other => return Err(CniError::env(format!("unknown CNI_COMMAND {other:?}"))),
        };
        let attachment = match verb {
            Verb::Add | Verb::Del | Verb::Check => {
                let container_id = required(env, "CNI_CONTAINERID")?.to_string();
                validate_container_id(&container_id)?;
                let ifname = required(env, "CNI_IFNAME")?.to_string();
                validate_ifname(&ifname)?;
                let netns = match (verb, env.get("CNI_NETNS").filter(|v| !v.is_empty())) {
                    (_, Some(p)) => Some(PathBuf::from(p)),
                    (Verb::Del, None) => None,
                    _ => return Err(CniError::env("CNI_NETNS is required for this command")),
                };
                Some(Attachment {
                    container_id,
                    ifname,
                    netns,
                })
            }
            Verb::Version | Verb::Status | Verb::Gc => None,
        };
        Ok(Command { verb, attachment })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let e = Command::from_env(&env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc")]))
            .unwrap_err();
        assert_eq!(e.code(), 4);
        let c = Command::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ]))
        .unwrap();
        assert_eq!(c.verb, Verb::Add);
    }

    #[test]
    fn del_tolerates_missing_netns() {
        let c = Command::from_env(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(c.attachment.unwrap().netns, None);
    }

    #[test]
    fn rejects_path_traversal_and_long_ifnames() {
        assert!(validate_container_id("../../etc").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_container_id("").is_err());
        assert!(validate_container_id("abc-1.2_3").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a/b").is_err());
    }

    #[test]
    fn unknown_command_is_invalid_env() {
        assert_eq!(
            Command::from_env(&env(&[("CNI_COMMAND", "FOO")]))
                .unwrap_err()
                .code(),
            4
        );
        assert_eq!(Command::from_env(&env(&[])).unwrap_err().code(), 4);
    }
}
