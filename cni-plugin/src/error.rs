//! The CNI error object (spec section "Error"): printed on stdout with exit code 1.

use std::io;

use ipnet::IpNet;
use petrel_netlink::NetlinkError;

/// Well-known codes of the CNI spec, and petrel's own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const POOL_EXHAUSTED: u32 = 100;
    pub const INTERFACE_EXISTS: u32 = 101;
    pub const NETLINK: u32 = 102;
    pub const CHECK_FAILED: u32 = 103;
}

/// Everything a verb can fail with. `code()`, `msg()` and `details()` are what the runtime sees;
/// the variants keep their sources for logs.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("unsupported cniVersion {version:?}")]
    IncompatibleVersion { version: String, supported: String },
    /// A verb the config's version does not define (CHECK before 0.4.0, STATUS and GC before
    /// 1.1.0): code 1, as the reference skel answers.
    #[error("incompatible CNI version: config version {version} does not allow {verb}")]
    VerbNotInVersion {
        verb: &'static str,
        version: String,
        since: &'static str,
    },
    /// `what` failed to decode ("invalid network configuration JSON", "prevResult is malformed").
    #[error("{what}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    InvalidEnv(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{} {}", .0.op, .0.object)]
    Netlink(#[from] NetlinkError),
    #[error("no free address in {range}")]
    PoolExhausted { range: IpNet, size: u128 },
    #[error("interface {ifname} already exists in {netns}")]
    InterfaceExists { ifname: String, netns: String },
    /// CHECK's findings, each a sentence; printed joined by "; ".
    #[error("{}", .0.join("; "))]
    CheckFailed(Vec<String>),
    /// STATUS: the plugin cannot serve ADDs right now.
    #[error("{0}")]
    NotAvailable(String),
}

impl CniError {
    pub fn env(msg: impl Into<String>) -> CniError {
        CniError::InvalidEnv(msg.into())
    }

    pub fn config(msg: impl Into<String>) -> CniError {
        CniError::InvalidConfig(msg.into())
    }

    pub fn decode(what: impl Into<String>, source: serde_json::Error) -> CniError {
        CniError::Decode {
            what: what.into(),
            source,
        }
    }

    pub fn io(what: impl Into<String>, source: io::Error) -> CniError {
        CniError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } | CniError::VerbNotInVersion { .. } => {
                code::INCOMPATIBLE_VERSION
            }
            CniError::Decode { .. } => code::DECODE,
            CniError::InvalidEnv(_) => code::INVALID_ENV,
            CniError::InvalidConfig(_) => code::INVALID_CONFIG,
            CniError::Io { .. } => code::IO,
            CniError::Netlink(_) => code::NETLINK,
            CniError::PoolExhausted { .. } => code::POOL_EXHAUSTED,
            CniError::InterfaceExists { .. } => code::INTERFACE_EXISTS,
            CniError::CheckFailed(_) => code::CHECK_FAILED,
            CniError::NotAvailable(_) => code::NOT_AVAILABLE,
        }
    }

    /// The spec's `msg`: what failed.
    pub fn msg(&self) -> String {
        self.to_string()
    }

    /// The spec's `details`: why, from the source (empty when the message says it all).
    pub fn details(&self) -> String {
        match self {
            CniError::IncompatibleVersion { supported, .. } => format!("supported: {supported}"),
            CniError::VerbNotInVersion { verb, since, .. } => {
                format!("{verb} needs cniVersion {since} or later")
            }
            CniError::Decode { source, .. } => source.to_string(),
            CniError::Io { source, .. } => source.to_string(),
            CniError::Netlink(e) => e.source.to_string(),
            CniError::PoolExhausted { size, .. } => format!("{size} addresses, all reserved"),
            CniError::InvalidEnv(_)
            | CniError::InvalidConfig(_)
            | CniError::InterfaceExists { .. }
            | CniError::CheckFailed(_)
            | CniError::NotAvailable(_) => String::new(),
        }
    }

    /// The message and its details on one line, for logs and STATUS.
    pub fn full(&self) -> String {
        let details = self.details();
        match details.is_empty() {
            true => self.msg(),
            false => format!("{}: {details}", self.msg()),
        }
    }

    /// The error object as the spec prints it.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.msg(),
            "details": self.details(),
        })
        .to_string()
    }
}

pub type Result<T> = std::result::Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_codes() {
        let e = CniError::PoolExhausted {
            range: "10.0.0.0/29".parse().unwrap(),
            size: 5,
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":100,"msg":"no free address in 10.0.0.0/29","details":"5 addresses, all reserved"})
        );
        let nl = CniError::from(NetlinkError::new(
            "creating veth",
            "pet1",
            io::Error::from_raw_os_error(libc::EEXIST),
        ));
        assert_eq!(nl.code(), 102);
        assert_eq!(nl.msg(), "creating veth pet1");
        assert!(nl.details().contains("exists"), "{}", nl.details());
        assert_eq!(
            CniError::CheckFailed(vec!["a".into(), "b".into()]).msg(),
            "a; b"
        );
        assert_eq!(CniError::io("x", io::Error::other("y")).full(), "x: y");
    }
}
