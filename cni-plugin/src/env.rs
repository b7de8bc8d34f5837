//! The plugin's environment (CNI_COMMAND and friends) as a typed command, checked per verb.

use std::{collections::HashMap, ffi::OsString, path::PathBuf};

use crate::error::{CniError, Result};

/// The process environment as text. A `CNI_*` variable whose value is not UTF-8 is refused
/// (code 4, naming it): the plugin cannot act on a value it cannot read. Any other variable that
/// is not UTF-8 (name or value) is not the plugin's business and is left out.
pub fn from_os(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (k, v) in vars {
        let Ok(k) = k.into_string() else {
            continue;
        };
        match v.into_string() {
            Ok(v) => {
                out.insert(k, v);
            }
            Err(v) if k.starts_with("CNI_") => {
                return Err(CniError::env(format!(
                    "{k} is not valid UTF-8: {:?}",
                    v.to_string_lossy()
                )));
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Verb {
    /// The verb as CNI_COMMAND spells it.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Version => "VERSION",
            Verb::Status => "STATUS",
            Verb::Gc => "GC",
        }
    }
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

/// Interface names as the kernel takes them (`dev_valid_name`): 1 to 15 bytes, no '/', ':' or
/// whitespace, not "." or "..". Also no '%': the kernel reads "eth%d" as a template and picks
/// the number itself, so the interface would not be called what the result says. No control
/// characters either (they make logs and `ip link` output lie).
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control());
    if bad {
        return Err(CniError::env(format!(
            "CNI_IFNAME {name:?} is not a valid interface name (1 to 15 bytes; no '/', ':', '%' or whitespace; not \".\" or \"..\")"
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
    fn ifnames_as_the_kernel_takes_them() {
        for bad in [
            "",
            ".",
            "..",
            "eth%d",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a/b",
            "0123456789abcdef",
        ] {
            let e = validate_ifname(bad).unwrap_err();
            assert_eq!(e.code(), 4, "{bad:?}");
            assert!(e.msg().starts_with("CNI_IFNAME"), "{}", e.msg());
        }
        for good in [
            "eth0",
            "net1",
            "0123456789abcde",
            "a.b",
            "a-b_c",
            "...",
            "é",
        ] {
            validate_ifname(good).unwrap_or_else(|e| panic!("{good:?}: {}", e.msg()));
        }
    }

    #[test]
    fn non_utf8_cni_values_are_refused_by_name_and_others_ignored() {
        use std::os::unix::ffi::OsStringExt as _;
        let bad = || OsString::from_vec(vec![b'e', 0xff, b'0']);
        let e = from_os([
            ("CNI_COMMAND".into(), "ADD".into()),
            ("CNI_IFNAME".into(), bad()),
        ])
        .unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(
            e.msg().starts_with("CNI_IFNAME is not valid UTF-8"),
            "{}",
            e.msg()
        );
        let env = from_os([
            ("CNI_COMMAND".into(), "VERSION".into()),
            ("LANG".into(), bad()),
            (bad(), "x".into()),
        ])
        .expect("other variables are ignored");
        assert_eq!(env.len(), 1);
        assert_eq!(env["CNI_COMMAND"], "VERSION");
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
