//! petrel's userspace datapath library: loads the eBPF object, pins maps and links under a bpffs
//! root, attaches programs, and wraps the maps in typed, byte-order-safe accessors; and the
//! routes to other nodes' pods (`routes`).

pub mod agent;
pub mod datapath;
pub mod maglev;
pub mod maps;
pub mod routes;
pub mod service;
pub mod sys;

pub use datapath::{Datapath, DatapathConfig, DatapathError};
pub use maps::{BackendSpec, Frontend, Proto, ServiceMaps};
pub use service::{Endpoint, ServiceEntry};
