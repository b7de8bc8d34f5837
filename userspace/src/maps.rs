//! Typed access to the pinned datapath maps. This is the one place where host values become the
//! network-byte-order fields of `petrel_common` types and back.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use petrel_common::{
    BACKEND_ACTIVE, Backend, IPPROTO_TCP, IPPROTO_UDP, MAP_VERSION, RevNat, SCOPE_EXTERNAL,
    ServiceKey, ServiceValue, stat,
};
use serde::Serialize;

/// Names of the pinned maps, in the order userspace writes them.
pub const SERVICES: &str = "SERVICES_V1";
pub const BACKENDS: &str = "BACKENDS_V1";
pub const REV_NAT: &str = "REV_NAT_V1";
pub const CONNTRACK: &str = "CT_V1";
pub const REV_CT: &str = "REV_CT_V1";
pub const STATS: &str = "STATS_V1";
const _: () = assert!(MAP_VERSION.len() == 2, "map names above carry the version");

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("opening pinned map {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            other => Err(format!("unsupported protocol {other:?} (TCP or UDP)")),
        }
    }
}

/// A service frontend: what clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

impl Frontend {
    fn key(&self, slot: u16, scope: u8) -> ServiceKey {
        ServiceKey {
            addr_be: u32::from(self.addr).to_be(),
            port_be: self.port.to_be(),
            slot,
            proto: self.proto.number(),
            scope,
            _pad: [0; 2],
        }
    }

    fn from_key(k: &ServiceKey) -> Option<Frontend> {
        Some(Frontend {
            addr: Ipv4Addr::from(u32::from_be(k.addr_be)),
            port: u16::from_be(k.port_be),
            proto: Proto::from_number(k.proto)?,
        })
    }
}

/// What a service frontend is programmed to, as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgrammedService {
    pub frontend: Frontend,
    pub rev_nat_id: u16,
    pub flags: u16,
    pub backends: Vec<ProgrammedBackend>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgrammedBackend {
    pub id: u32,
    /// None when a slot names a backend id that is not in the backend map.
    pub addr: Option<SocketAddrV4>,
    pub state: &'static str,
}

/// The service maps, opened from their pins.
pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    rev_nat: HashMap<MapData, u32, RevNat>,
    stats: PerCpuArray<MapData, u64>,
}

fn open(dir: &Path, name: &str) -> Result<Map, MapsError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| MapsError::Open { path, source })
}

fn op<T>(op: &'static str, map: &'static str, r: Result<T, MapError>) -> Result<T, MapsError> {
    r.map_err(|source| MapsError::Op { op, map, source })
}

/// A missing key is not an error for removals: the goal state is reached.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

impl ServiceMaps {
    /// Opens the maps pinned in `maps_dir` (a datapath's `maps/` folder).
    pub fn open(maps_dir: &Path) -> Result<Self, MapsError> {
        Ok(ServiceMaps {
            services: op(
                "open",
                SERVICES,
                HashMap::try_from(open(maps_dir, SERVICES)?),
            )?,
            backends: op(
                "open",
                BACKENDS,
                HashMap::try_from(open(maps_dir, BACKENDS)?),
            )?,
            rev_nat: op("open", REV_NAT, HashMap::try_from(open(maps_dir, REV_NAT)?))?,
            stats: op("open", STATS, PerCpuArray::try_from(open(maps_dir, STATS)?))?,
        })
    }

    pub fn upsert_backend(
        &mut self,
        id: u32,
        addr: SocketAddrV4,
        proto: Proto,
    ) -> Result<(), MapsError> {
        let value = Backend {
            addr_be: u32::from(*addr.ip()).to_be(),
            port_be: addr.port().to_be(),
            proto: proto.number(),
            state: BACKEND_ACTIVE,
        };
        op("insert", BACKENDS, self.backends.insert(id, value, 0))
    }

    pub fn remove_backend(&mut self, id: u32) -> Result<(), MapsError> {
        op(
            "remove",
            BACKENDS,
            ignore_missing(self.backends.remove(&id)),
        )
    }

    /// Programs `frontend` with the given backend ids, in an order that never exposes a
    /// half-built service: reverse NAT, then the slots, then the master entry (which makes the
    /// new slot count visible), then stale slots beyond the new count. The backends must already
    /// be in the backend map.
    pub fn upsert_service(
        &mut self,
        frontend: Frontend,
        rev_nat_id: u16,
        flags: u16,
        backend_ids: &[u32],
    ) -> Result<(), MapsError> {
        let count = u16::try_from(backend_ids.len()).map_err(|_| MapsError::TooManyBackends {
            frontend,
            count: backend_ids.len(),
            max: u16::MAX as usize,
        })?;
        let old_count = self.master(frontend)?.map_or(0, |m| m.count);
        let rev = RevNat {
            addr_be: u32::from(frontend.addr).to_be(),
            port_be: frontend.port.to_be(),
            _pad: [0; 2],
        };
        op(
            "insert",
            REV_NAT,
            self.rev_nat.insert(rev_nat_id as u32, rev, 0),
        )?;
        let master = ServiceValue {
            backend_id: 0,
            count,
            rev_nat_id,
            flags,
            _pad: [0; 2],
            affinity_timeout_s: 0,
        };
        for (i, id) in backend_ids.iter().enumerate() {
            let slot = ServiceValue {
                backend_id: *id,
                ..master
            };
            op(
                "insert",
                SERVICES,
                self.services
                    .insert(frontend.key(i as u16 + 1, SCOPE_EXTERNAL), slot, 0),
            )?;
        }
        op(
            "insert",
            SERVICES,
            self.services
                .insert(frontend.key(0, SCOPE_EXTERNAL), master, 0),
        )?;
        for slot in count + 1..=old_count {
            op(
                "remove",
                SERVICES,
                ignore_missing(self.services.remove(&frontend.key(slot, SCOPE_EXTERNAL))),
            )?;
        }
        Ok(())
    }

    /// Removes a frontend: master entry first (new flows stop matching), then its slots.
    pub fn remove_service(&mut self, frontend: Frontend) -> Result<(), MapsError> {
        let Some(master) = self.master(frontend)? else {
            return Ok(());
        };
        op(
            "remove",
            SERVICES,
            ignore_missing(self.services.remove(&frontend.key(0, SCOPE_EXTERNAL))),
        )?;
        for slot in 1..=master.count {
            op(
                "remove",
                SERVICES,
                ignore_missing(self.services.remove(&frontend.key(slot, SCOPE_EXTERNAL))),
            )?;
        }
        op(
            "remove",
            REV_NAT,
            ignore_missing(self.rev_nat.remove(&(master.rev_nat_id as u32))),
        )
    }

    fn master(&self, frontend: Frontend) -> Result<Option<ServiceValue>, MapsError> {
        match self.services.get(&frontend.key(0, SCOPE_EXTERNAL), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(MapsError::Op {
                op: "lookup",
                map: SERVICES,
                source,
            }),
        }
    }

    /// Every programmed frontend with its backends, sorted by frontend.
    pub fn dump(&self) -> Result<Vec<ProgrammedService>, MapsError> {
        let mut masters = BTreeMap::new();
        for entry in self.services.iter() {
            let (k, v) = op("iterate", SERVICES, entry)?;
            if k.slot == 0 && k.scope == SCOPE_EXTERNAL {
                if let Some(fe) = Frontend::from_key(&k) {
                    masters.insert(fe, v);
                }
            }
        }
        let mut out = Vec::with_capacity(masters.len());
        for (fe, m) in masters {
            let mut backends = Vec::with_capacity(m.count as usize);
            for slot in 1..=m.count {
                let id = match self.services.get(&fe.key(slot, SCOPE_EXTERNAL), 0) {
                    Ok(v) => v.backend_id,
                    Err(MapError::KeyNotFound) => continue,
                    Err(source) => {
                        return Err(MapsError::Op {
                            op: "lookup",
                            map: SERVICES,
                            source,
                        });
                    }
                };
                let (addr, state) = match self.backends.get(&id, 0) {
                    Ok(b) => (
                        Some(SocketAddrV4::new(
                            Ipv4Addr::from(u32::from_be(b.addr_be)),
                            u16::from_be(b.port_be),
                        )),
                        if b.state == BACKEND_ACTIVE {
                            "active"
                        } else {
                            "terminating"
                        },
                    ),
                    Err(MapError::KeyNotFound) => (None, "missing"),
                    Err(source) => {
                        return Err(MapsError::Op {
                            op: "lookup",
                            map: BACKENDS,
                            source,
                        });
                    }
                };
                backends.push(ProgrammedBackend { id, addr, state });
            }
            out.push(ProgrammedService {
                frontend: fe,
                rev_nat_id: m.rev_nat_id,
                flags: m.flags,
                backends,
            });
        }
        Ok(out)
    }

    /// Datapath counters summed over CPUs, by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        let mut out = Vec::with_capacity(stat::NAMES.len());
        for (i, name) in stat::NAMES.iter().enumerate() {
            let per_cpu = op("lookup", STATS, self.stats.get(&(i as u32), 0))?;
            out.push((*name, per_cpu.iter().sum()));
        }
        Ok(out)
    }
}
