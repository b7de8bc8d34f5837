//! petrel's userspace datapath library: loads the eBPF object, pins maps and links under a bpffs
//! root, attaches programs, and wraps the maps in typed, byte-order-safe accessors.

pub mod datapath;
pub mod maps;
pub mod sys;

pub use datapath::{Datapath, DatapathConfig, DatapathError};
pub use maps::{Frontend, Proto, ServiceMaps};
