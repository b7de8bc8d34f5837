//! Pod traffic to other nodes: which nodes to route to (`plan`, pure), the kernel's routes, VXLAN
//! device and neighbour entries (`kernel`), and keeping the two in line at every sync
//! (`reconcile`).

pub mod kernel;
pub mod plan;
pub mod reconcile;

pub use kernel::{Mode, VXLAN_IFNAME};
pub use plan::{Plan, RemoteNode, plan};
pub use reconcile::{RouteSync, Settings};
