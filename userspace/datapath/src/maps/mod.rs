//! The pinned datapath maps: their names, the one error type, and `MapStore`, the narrow
//! interface the service writer and the read side work over. `PinnedMaps` is the real one (aya
//! handles on the pins); `FakeMaps` keeps the same values in memory so the write order and the
//! reconciler are tested without privilege (Cilium's `LBMaps` with its fake and faulty maps).
//!
//! Values cross this interface as the kernel's `petrel_common` types; `codec` is the one place
//! that converts them to and from the host-order `model` types.

use std::path::PathBuf;

use aya::maps::MapError;
use ipnet::Ipv4Net;
use petrel_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, RevNat, ServiceKey, ServiceValue, SockKey,
    SockValue,
};

use crate::model::Frontend;

pub mod adopt;
mod batch;
pub mod codec;
pub mod fake;
mod maglev;
pub mod pinned;
pub mod writer;

pub use fake::{FakeMaps, FaultyMaps};
pub use pinned::PinnedMaps;
pub use writer::ServiceMaps;

/// Names of the pinned maps.
pub const SERVICES: &str = "SERVICES_V1";
pub const BACKENDS: &str = "BACKENDS_V1";
pub const REV_NAT: &str = "REV_NAT_V1";
pub const CONNTRACK: &str = "CT_V2";
pub const FRAGS: &str = "FRAGS_V1";
pub const STATS: &str = "STATS_V2";
pub const AFFINITY: &str = "AFFINITY_V1";
pub const MAGLEV: &str = "MAGLEV_V1";
pub const SOCK_REVNAT: &str = "SOCK_REVNAT_V1";
pub const SOCK_CT: &str = "SOCK_CT_V2";
pub const CONFIG: &str = "CONFIG_V2";
pub const SRC_RANGES: &str = "SRC_RANGES_V1";
/// Every map this release pins, by name (what `--cleanup` may remove, with `OBSOLETE`).
pub const ALL: [&str; 12] = [
    SERVICES,
    BACKENDS,
    REV_NAT,
    CONNTRACK,
    FRAGS,
    STATS,
    AFFINITY,
    MAGLEV,
    SOCK_REVNAT,
    SOCK_CT,
    CONFIG,
    SRC_RANGES,
];
/// Pins of maps earlier releases had and this one does not (replaced by a new layout): removed
/// at load, so an upgrade leaves nothing behind.
pub const OBSOLETE: [&str; 5] = ["CT_V1", "REV_CT_V1", "STATS_V1", "CONFIG_V1", "SOCK_CT_V1"];

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("opening pinned map {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(
        "map {map} has {what} size {pinned}, expected {expected}: pinned by another petrel version? ({path})"
    )]
    Shape {
        map: &'static str,
        path: PathBuf,
        what: &'static str,
        pinned: usize,
        expected: usize,
    },
    #[error(
        "map {map} is of another map type (kernel type {map_type}) than this petrel pins: pinned by another petrel version or another tool? ({path})"
    )]
    WrongType {
        map: &'static str,
        path: PathBuf,
        map_type: u32,
    },
    #[error("{op} in map {map}: {source}")]
    Op {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("service {frontend} has {count} backends; at most {max} fit")]
    TooManyBackends {
        frontend: Frontend,
        count: usize,
        max: usize,
    },
}

/// The map operations petrel's userspace performs, one method per (map, operation). Lookups of
/// absent keys return `Ok(None)`; removals of absent keys succeed (the goal state is reached).
pub trait MapStore {
    fn service_get(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapsError>;
    fn service_put(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), MapsError>;
    fn service_del(&mut self, key: &ServiceKey) -> Result<(), MapsError>;
    /// Every SERVICES entry (master entries and slots of both scopes).
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapsError>;

    fn backend_get(&self, id: u32) -> Result<Option<Backend>, MapsError>;
    fn backend_put(&mut self, id: u32, value: Backend) -> Result<(), MapsError>;
    fn backend_del(&mut self, id: u32) -> Result<(), MapsError>;
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapsError>;

    fn rev_nat_put(&mut self, id: u32, value: RevNat) -> Result<(), MapsError>;
    fn rev_nat_del(&mut self, id: u32) -> Result<(), MapsError>;
    fn rev_nats(&self) -> Result<Vec<(u32, RevNat)>, MapsError>;

    /// One position of the flat Maglev array (`ring * size + position`).
    fn maglev_get(&self, index: u32) -> Result<u32, MapsError>;
    fn maglev_set(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError>;
    /// The whole flat Maglev array, by index (positions never written hold 0).
    fn maglev_all(&self) -> Result<Vec<u32>, MapsError>;

    fn config_get(&self, index: u32) -> Result<u32, MapsError>;
    fn config_set(&mut self, index: u32, value: u32) -> Result<(), MapsError>;

    /// Datapath counter `index`, summed over CPUs.
    fn stat(&self, index: u32) -> Result<u64, MapsError>;

    fn ct_get(&self, key: &CtKey) -> Result<Option<CtValue>, MapsError>;
    /// At most `limit` conntrack entries (both directions).
    fn ct_entries(&self, limit: usize) -> Result<Vec<(CtKey, CtValue)>, MapsError>;
    fn ct_del(&mut self, key: &CtKey) -> Result<(), MapsError>;
    /// The conntrack map's capacity in entries (two per connection), as the kernel has it: a map
    /// adopted from its pin keeps the size it was created with.
    fn ct_capacity(&self) -> Result<u32, MapsError>;

    fn affinity_get(&self, key: &AffinityKey) -> Result<Option<AffinityValue>, MapsError>;
    /// At most `limit` session affinity entries.
    fn affinity_entries(
        &self,
        limit: usize,
    ) -> Result<Vec<(AffinityKey, AffinityValue)>, MapsError>;
    fn affinity_del(&mut self, key: &AffinityKey) -> Result<(), MapsError>;

    /// socket-LB's reverse translation: (socket cookie, backend) -> the frontend it stands for.
    fn sock_revnat_get(&self, key: &SockKey) -> Result<Option<SockValue>, MapsError>;
    fn sock_revnat_del(&mut self, key: &SockKey) -> Result<(), MapsError>;
    /// loadBalancerSourceRanges: a prefix the frontend with `rev_nat_id` accepts clients from.
    /// (Host-order here: the LPM trie's key type has no ordering or hashing, `codec` builds it.)
    fn src_range_put(&mut self, rev_nat_id: u32, net: Ipv4Net) -> Result<(), MapsError>;
    fn src_range_del(&mut self, rev_nat_id: u32, net: Ipv4Net) -> Result<(), MapsError>;
    /// Every SRC_RANGES entry.
    fn src_ranges(&self) -> Result<Vec<(u32, Ipv4Net)>, MapsError>;
}
