//! petrel-netlink: a small blocking rtnetlink client, in the shape of netavark's
//! `network/netlink.rs`: one [`Socket`] per network namespace, opened once, and a typed method per
//! operation petrel needs (links, addresses, routes, neighbour and FDB entries). No async runtime:
//! each call is one request and its replies, which is what a CNI plugin or a routing sync needs.
//!
//! Messages come from `netlink-packet-route` (and `netlink-packet-sock-diag` for the one
//! NETLINK_SOCK_DIAG exchange, [`DiagSocket`]); this crate only builds the few messages petrel
//! sends and reads the attributes petrel looks at.

pub mod addr;
pub mod error;
pub mod events;
pub mod link;
pub mod neigh;
pub mod netns;
pub mod route;
pub mod sock_diag;
pub mod socket;
pub mod sysctl;

pub use error::NetlinkError;
pub use events::{Event, Events};

pub use link::{LinkId, VethSpec, VxlanSpec};
pub use netlink_packet_route as packet;
pub use netns::Netns;
pub use route::{Family, Route, Route4, Route6};
pub use sock_diag::{DiagSocket, UdpSock};
pub use socket::Socket;
pub use sysctl::Sysctl;

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;
