//! petrel's datapath library: loads the eBPF object, pins maps and links under a bpffs root,
//! attaches programs (`datapath`), writes services and backends to the maps in a safe order over
//! a narrow map interface (`maps`), and reads them back for netctl (`inspect`); the agent's
//! background work on the maps: conntrack GC (`conntrack`), and `sock_term` for connected UDP
//! sockets on removed backends. The domain types are in `model`; the Kubernetes side lives in
//! petrel-agent.

pub mod cleanup;
pub mod conntrack;
pub mod datapath;
pub mod inspect;
pub mod maglev;
pub mod maps;
pub mod model;
pub mod sock_term;
pub mod sys;

pub use datapath::{Datapath, DatapathConfig, DatapathError, pinned_capacity};
pub use maps::ServiceMaps;
pub use model::{BackendSpec, Endpoint, Frontend, Proto, ServiceEntry};
