//! petrel's datapath library: loads the eBPF object, pins maps and links under a bpffs root,
//! attaches programs (`datapath`), writes services and backends to the maps in a safe order over
//! a narrow map interface (`maps`), and reads them back for netctl (`inspect`). The domain types
//! are in `model`; the Kubernetes side lives in petrel-agent.

pub mod conntrack;
pub mod datapath;
pub mod inspect;
pub mod maglev;
pub mod maps;
pub mod model;
pub mod sys;

pub use datapath::{Datapath, DatapathConfig, DatapathError};
pub use maps::ServiceMaps;
pub use model::{BackendSpec, Endpoint, Frontend, Proto, ServiceEntry};
