//! The one error of this crate: which operation, on what, and the cause as an `io::Error` (a
//! kernel NACK becomes its errno, so callers match on `errno()`, never on text).

use std::io;

#[derive(Debug, thiserror::Error)]
#[error("{op} {object}: {source}")]
pub struct NetlinkError {
    /// What was being done ("creating veth", "listing routes", ...).
    pub op: &'static str,
    /// What it was done to (an interface name, an address, a path).
    pub object: String,
    #[source]
    pub source: io::Error,
}

impl NetlinkError {
    pub fn new(op: &'static str, object: impl Into<String>, source: io::Error) -> NetlinkError {
        NetlinkError {
            op,
            object: object.into(),
            source,
        }
    }

    /// The errno the kernel (or a syscall) answered, if the cause was one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    pub fn into_io(self) -> io::Error {
        self.source
    }
}
