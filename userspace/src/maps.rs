//! Typed access to the pinned datapath maps. This is the one place where host values become the
//! network-byte-order fields of `petrel_common` types and back.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use petrel_common::{
    AFFINITY_CLIENT_IP, AffinityKey, AffinityValue, BACKEND_F_REMOTE, BACKEND_F_TERMINATING,
    Backend, CT_F_INBOUND, CT_F_MASQ, CT_F_SNAT, CtKey, CtValue, IPPROTO_TCP, IPPROTO_UDP,
    MAP_VERSION, RevNat, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_DROP_EMPTY,
    SVC_F_EXTERNAL, SVC_F_LOCAL_EXTERNAL, SVC_F_MAGLEV, SVC_F_TWO_SCOPES, ServiceKey, ServiceValue,
    config, stat,
};

use crate::{maglev, service::ServiceEntry};
use serde::Serialize;

/// Names of the pinned maps, in the order userspace writes them.
pub const SERVICES: &str = "SERVICES_V1";
pub const BACKENDS: &str = "BACKENDS_V1";
pub const REV_NAT: &str = "REV_NAT_V1";
pub const CONNTRACK: &str = "CT_V1";
pub const REV_CT: &str = "REV_CT_V1";
pub const STATS: &str = "STATS_V1";
pub const AFFINITY: &str = "AFFINITY_V1";
pub const MAGLEV: &str = "MAGLEV_V1";
pub const SOCK_REVNAT: &str = "SOCK_REVNAT_V1";
pub const SOCK_CT: &str = "SOCK_CT_V1";
pub const CONFIG: &str = "CONFIG_V1";
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

/// A backend as userspace describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub id: u32,
    pub addr: SocketAddrV4,
    pub proto: Proto,
    pub terminating: bool,
    /// On another node: external traffic to it is SNATed (policy Cluster).
    pub remote: bool,
}

/// What a service frontend is programmed to, as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgrammedService {
    pub frontend: Frontend,
    pub rev_nat_id: u32,
    pub flags: Vec<&'static str>,
    pub affinity_timeout_s: Option<u32>,
    pub maglev_ring: Option<u32>,
    /// Backends for traffic from outside the node (and for all traffic without `internal`).
    pub backends: Vec<ProgrammedBackend>,
    /// Backends for in-cluster traffic when a Local policy splits the scopes.
    pub internal_backends: Option<Vec<ProgrammedBackend>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgrammedBackend {
    pub id: u32,
    pub proto: Option<Proto>,
    /// None when a slot names a backend id that is not in the backend map.
    pub addr: Option<SocketAddrV4>,
    pub state: &'static str,
    pub remote: bool,
}

fn programmed_backend(id: u32, b: &Backend) -> ProgrammedBackend {
    ProgrammedBackend {
        id,
        proto: Proto::from_number(b.proto),
        addr: Some(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(b.addr_be)),
            u16::from_be(b.port_be),
        )),
        state: if b.flags & BACKEND_F_TERMINATING != 0 {
            "terminating"
        } else {
            "active"
        },
        remote: b.flags & BACKEND_F_REMOTE != 0,
    }
}

const FLAG_NAMES: [(u16, &str); 6] = [
    (SVC_F_AFFINITY, "affinity"),
    (SVC_F_TWO_SCOPES, "two-scopes"),
    (SVC_F_EXTERNAL, "external"),
    (SVC_F_LOCAL_EXTERNAL, "external-local"),
    (SVC_F_MAGLEV, "maglev"),
    (SVC_F_DROP_EMPTY, "drop-when-empty"),
];

/// The service maps, opened from their pins.
pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    rev_nat: HashMap<MapData, u32, RevNat>,
    maglev: Array<MapData, u32>,
    config: Array<MapData, u32>,
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
            maglev: op("open", MAGLEV, Array::try_from(open(maps_dir, MAGLEV)?))?,
            config: op("open", CONFIG, Array::try_from(open(maps_dir, CONFIG)?))?,
            stats: op("open", STATS, PerCpuArray::try_from(open(maps_dir, STATS)?))?,
        })
    }

    /// The node address external traffic to remote backends is SNATed to.
    pub fn set_node_ip(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        op(
            "set",
            CONFIG,
            self.config.set(config::NODE_IP, u32::from(ip).to_be(), 0),
        )
    }

    /// The cluster's pod CIDR: pod egress to addresses outside it is masqueraded to the node
    /// address. None turns masquerading off.
    pub fn set_cluster_cidr(&mut self, cidr: Option<ipnet::Ipv4Net>) -> Result<(), MapsError> {
        let (addr, mask) = cidr.map_or((0, 0), |c| {
            (
                u32::from(c.network()).to_be(),
                u32::from(c.netmask()).to_be(),
            )
        });
        // Mask first when turning off, address first when turning on: the datapath never sees
        // a mask with a stale address.
        op("set", CONFIG, self.config.set(config::CLUSTER_MASK, 0, 0))?;
        op(
            "set",
            CONFIG,
            self.config.set(config::CLUSTER_CIDR, addr, 0),
        )?;
        op(
            "set",
            CONFIG,
            self.config.set(config::CLUSTER_MASK, mask, 0),
        )
    }

    /// Size of each Maglev ring (must match how the MAGLEV map was sized).
    pub fn set_maglev_size(&mut self, m: u32) -> Result<(), MapsError> {
        op("set", CONFIG, self.config.set(config::MAGLEV_SIZE, m, 0))
    }

    pub fn maglev_size(&self) -> Result<u32, MapsError> {
        op("get", CONFIG, self.config.get(&config::MAGLEV_SIZE, 0))
    }

    pub fn upsert_backend(&mut self, b: &BackendSpec) -> Result<(), MapsError> {
        let mut flags = 0;
        if b.terminating {
            flags |= BACKEND_F_TERMINATING;
        }
        if b.remote {
            flags |= BACKEND_F_REMOTE;
        }
        let value = Backend {
            addr_be: u32::from(*b.addr.ip()).to_be(),
            port_be: b.addr.port().to_be(),
            proto: b.proto.number(),
            flags,
        };
        op("insert", BACKENDS, self.backends.insert(b.id, value, 0))
    }

    /// Removes a backend. Flows pinned to it are re-balanced by the datapath on their next packet.
    pub fn remove_backend(&mut self, id: u32) -> Result<(), MapsError> {
        op(
            "remove",
            BACKENDS,
            ignore_missing(self.backends.remove(&id)),
        )
    }

    /// Writes one scope's slots and then its master entry; removes slots beyond the new count.
    fn write_scope(
        &mut self,
        fe: Frontend,
        scope: u8,
        master: ServiceValue,
        ids: &[u32],
    ) -> Result<(), MapsError> {
        let old_count = self.master(fe, scope)?.map_or(0, |m| m.count);
        for (i, id) in ids.iter().enumerate() {
            let slot = ServiceValue {
                backend_id: *id,
                ..master
            };
            op(
                "insert",
                SERVICES,
                self.services.insert(fe.key(i as u16 + 1, scope), slot, 0),
            )?;
        }
        op(
            "insert",
            SERVICES,
            self.services.insert(fe.key(0, scope), master, 0),
        )?;
        for slot in master.count + 1..=old_count {
            op(
                "remove",
                SERVICES,
                ignore_missing(self.services.remove(&fe.key(slot, scope))),
            )?;
        }
        Ok(())
    }

    fn remove_scope(&mut self, fe: Frontend, scope: u8) -> Result<(), MapsError> {
        let Some(master) = self.master(fe, scope)? else {
            return Ok(());
        };
        op(
            "remove",
            SERVICES,
            ignore_missing(self.services.remove(&fe.key(0, scope))),
        )?;
        for slot in 1..=master.count {
            op(
                "remove",
                SERVICES,
                ignore_missing(self.services.remove(&fe.key(slot, scope))),
            )?;
        }
        Ok(())
    }

    /// Programs a frontend, in an order that never exposes a half-built service: reverse NAT and
    /// the Maglev ring, then the internal scope (slots, then master), then the external scope's
    /// slots and finally its master entry, which is what lookups start from. Stale slots and a
    /// no-longer-needed internal scope are removed last. The backends must already be in the
    /// backend map.
    pub fn upsert_service(&mut self, entry: &ServiceEntry) -> Result<(), MapsError> {
        let fe = entry.frontend;
        let scopes = entry.scopes();
        for set in std::iter::once(&scopes.external).chain(scopes.internal.as_ref()) {
            if set.len() > u16::MAX as usize {
                return Err(MapsError::TooManyBackends {
                    frontend: fe,
                    count: set.len(),
                    max: u16::MAX as usize,
                });
            }
        }
        let rev = RevNat {
            addr_be: u32::from(fe.addr).to_be(),
            port_be: fe.port.to_be(),
            _pad: [0; 2],
        };
        op(
            "insert",
            REV_NAT,
            self.rev_nat.insert(entry.rev_nat_id, rev, 0),
        )?;

        let mut common = 0;
        if entry.affinity_timeout_s.is_some() {
            common |= SVC_F_AFFINITY;
        }
        let base = ServiceValue {
            rev_nat_id: entry.rev_nat_id,
            affinity_timeout_s: entry.affinity_timeout_s.unwrap_or(0),
            ..Default::default()
        };
        let mut ext_flags = common;
        if entry.external {
            ext_flags |= SVC_F_EXTERNAL;
            if entry.external_local {
                ext_flags |= SVC_F_LOCAL_EXTERNAL;
            }
        }
        if scopes.external_filtered {
            ext_flags |= SVC_F_DROP_EMPTY;
        }
        let mut maglev_ring = 0;
        if let Some(ring) = entry.maglev_ring {
            self.write_maglev(ring, &scopes.external)?;
            ext_flags |= SVC_F_MAGLEV;
            maglev_ring = ring;
        }
        if let Some(internal) = &scopes.internal {
            ext_flags |= SVC_F_TWO_SCOPES;
            let mut flags = common;
            if scopes.internal_filtered {
                flags |= SVC_F_DROP_EMPTY;
            }
            let master = ServiceValue {
                count: internal.len() as u16,
                flags,
                ..base
            };
            self.write_scope(fe, SCOPE_INTERNAL, master, internal)?;
        }
        let master = ServiceValue {
            count: scopes.external.len() as u16,
            flags: ext_flags,
            maglev_ring,
            ..base
        };
        self.write_scope(fe, SCOPE_EXTERNAL, master, &scopes.external)?;
        if scopes.internal.is_none() {
            self.remove_scope(fe, SCOPE_INTERNAL)?;
        }
        Ok(())
    }

    /// Fills Maglev ring `ring` for `ids` (names from the backend map, so every node computes the
    /// same table).
    fn write_maglev(&mut self, ring: u32, ids: &[u32]) -> Result<(), MapsError> {
        let m = self.maglev_size()?;
        if m == 0 {
            return Ok(());
        }
        let mut named = Vec::with_capacity(ids.len());
        for id in ids {
            let b = op("lookup", BACKENDS, self.backends.get(id, 0))?;
            let addr = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(b.addr_be)),
                u16::from_be(b.port_be),
            );
            named.push((*id, addr.to_string()));
        }
        let table = maglev::table(&named, m);
        let base = ring * m;
        for pos in 0..m {
            let id = table.get(pos as usize).copied().unwrap_or(0);
            op("set", MAGLEV, self.maglev.set(base + pos, id, 0))?;
        }
        Ok(())
    }

    /// Removes a frontend: the external master first (new flows stop matching), then the rest.
    pub fn remove_service(&mut self, frontend: Frontend) -> Result<(), MapsError> {
        let Some(master) = self.master(frontend, SCOPE_EXTERNAL)? else {
            return Ok(());
        };
        self.remove_scope(frontend, SCOPE_EXTERNAL)?;
        self.remove_scope(frontend, SCOPE_INTERNAL)?;
        op(
            "remove",
            REV_NAT,
            ignore_missing(self.rev_nat.remove(&master.rev_nat_id)),
        )
    }

    fn master(&self, frontend: Frontend, scope: u8) -> Result<Option<ServiceValue>, MapsError> {
        match self.services.get(&frontend.key(0, scope), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(MapsError::Op {
                op: "lookup",
                map: SERVICES,
                source,
            }),
        }
    }

    fn read_scope(
        &self,
        fe: Frontend,
        scope: u8,
        count: u16,
    ) -> Result<Vec<ProgrammedBackend>, MapsError> {
        let mut backends = Vec::with_capacity(count as usize);
        for slot in 1..=count {
            let id = match self.services.get(&fe.key(slot, scope), 0) {
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
            let b = match self.backends.get(&id, 0) {
                Ok(b) => programmed_backend(id, &b),
                Err(MapError::KeyNotFound) => ProgrammedBackend {
                    id,
                    proto: None,
                    addr: None,
                    state: "missing",
                    remote: false,
                },
                Err(source) => {
                    return Err(MapsError::Op {
                        op: "lookup",
                        map: BACKENDS,
                        source,
                    });
                }
            };
            backends.push(b);
        }
        Ok(backends)
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
            let internal_backends = match self.master(fe, SCOPE_INTERNAL)? {
                Some(im) if m.flags & SVC_F_TWO_SCOPES != 0 => {
                    Some(self.read_scope(fe, SCOPE_INTERNAL, im.count)?)
                }
                _ => None,
            };
            out.push(ProgrammedService {
                frontend: fe,
                rev_nat_id: m.rev_nat_id,
                flags: FLAG_NAMES
                    .iter()
                    .filter(|(f, _)| m.flags & f != 0)
                    .map(|(_, n)| *n)
                    .collect(),
                affinity_timeout_s: (m.flags & SVC_F_AFFINITY != 0).then_some(m.affinity_timeout_s),
                maglev_ring: (m.flags & SVC_F_MAGLEV != 0).then_some(m.maglev_ring),
                backends: self.read_scope(fe, SCOPE_EXTERNAL, m.count)?,
                internal_backends,
            });
        }
        Ok(out)
    }

    /// Every backend in the backend map, by id.
    pub fn backends(&self) -> Result<Vec<ProgrammedBackend>, MapsError> {
        let mut out = Vec::new();
        for entry in self.backends.iter() {
            let (id, b) = op("iterate", BACKENDS, entry)?;
            out.push(programmed_backend(id, &b));
        }
        out.sort_by_key(|b| b.id);
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

/// One tracked flow, as the TC path recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackedFlow {
    pub proto: Option<Proto>,
    pub client: SocketAddrV4,
    pub frontend: SocketAddrV4,
    pub backend_id: u32,
    pub rev_nat_id: u32,
    /// The source the flow is rewritten to (SNAT to the node, or the hairpin address).
    pub snat: Option<SocketAddrV4>,
    /// Pod egress masqueraded to the node address (no service: `frontend` is the destination).
    pub masquerade: bool,
    /// A flow from outside the cluster to a pod (keyed by the pod's reply): left untranslated.
    pub inbound: bool,
}

/// The forward conntrack entries pinned in `maps_dir` (at most `limit`).
pub fn conntrack(maps_dir: &Path, limit: usize) -> Result<Vec<TrackedFlow>, MapsError> {
    let ct: HashMap<MapData, CtKey, CtValue> = op(
        "open",
        CONNTRACK,
        HashMap::try_from(open(maps_dir, CONNTRACK)?),
    )?;
    let sock = |a: u32, p: u16| SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a)), u16::from_be(p));
    let mut out = Vec::new();
    for entry in ct.iter().take(limit) {
        let (k, v) = op("iterate", CONNTRACK, entry)?;
        out.push(TrackedFlow {
            proto: Proto::from_number(k.proto),
            client: sock(k.saddr_be, k.sport_be),
            frontend: sock(k.daddr_be, k.dport_be),
            backend_id: v.backend_id,
            rev_nat_id: v.rev_nat_id,
            snat: (v.flags & CT_F_SNAT != 0).then(|| sock(v.nat_addr_be, v.nat_port_be)),
            masquerade: v.flags & CT_F_MASQ != 0,
            inbound: v.flags & CT_F_INBOUND != 0,
        });
    }
    Ok(out)
}

/// What `netctl explain` found out about one flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub frontend: Frontend,
    /// "internal" (from a pod or process on the node) or "external" (arrived from outside).
    pub scope: &'static str,
    /// The backend the flow gets, when it is determined.
    pub backend: Option<SocketAddrV4>,
    /// Each step of the decision, in order.
    pub steps: Vec<String>,
}

impl ServiceMaps {
    /// Explains which backend a flow from `client` (port 0: any) to `frontend` gets and why,
    /// following the datapath's own order: conntrack, scope, empty service, affinity, Maglev or
    /// random slot.
    pub fn explain(
        &self,
        maps_dir: &Path,
        client: SocketAddrV4,
        frontend: Frontend,
        external: bool,
    ) -> Result<Explanation, MapsError> {
        let mut steps = Vec::new();
        let scope = if external { "external" } else { "internal" };
        let mut out = Explanation {
            frontend,
            scope,
            backend: None,
            steps: Vec::new(),
        };
        let addr_of = |id: u32| -> Result<Option<SocketAddrV4>, MapsError> {
            match self.backends.get(&id, 0) {
                Ok(b) => Ok(Some(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(b.addr_be)),
                    u16::from_be(b.port_be),
                ))),
                Err(MapError::KeyNotFound) => Ok(None),
                Err(source) => Err(MapsError::Op {
                    op: "lookup",
                    map: BACKENDS,
                    source,
                }),
            }
        };
        if client.port() != 0 {
            let ct: HashMap<MapData, CtKey, CtValue> = op(
                "open",
                CONNTRACK,
                HashMap::try_from(open(maps_dir, CONNTRACK)?),
            )?;
            let key = CtKey {
                saddr_be: u32::from(*client.ip()).to_be(),
                daddr_be: u32::from(frontend.addr).to_be(),
                sport_be: client.port().to_be(),
                dport_be: frontend.port.to_be(),
                proto: frontend.proto.number(),
                _pad: [0; 3],
            };
            if let Ok(v) = ct.get(&key, 0) {
                match addr_of(v.backend_id)? {
                    Some(a) => {
                        steps.push(format!(
                            "an established flow in conntrack: pinned to backend #{} {a}",
                            v.backend_id
                        ));
                        out.backend = Some(a);
                        out.steps = steps;
                        return Ok(out);
                    }
                    None => steps.push(format!(
                        "in conntrack, but backend #{} is gone: the flow is re-balanced",
                        v.backend_id
                    )),
                }
            }
        }
        let Some(master) = self.master(frontend, SCOPE_EXTERNAL)? else {
            steps.push(format!(
                "{frontend} is not a service frontend: the packet is not translated"
            ));
            out.steps = steps;
            return Ok(out);
        };
        let (svc, scope_id) = if !external && master.flags & SVC_F_TWO_SCOPES != 0 {
            steps.push("a Local traffic policy splits the service: in-cluster traffic uses the internal backend set".into());
            match self.master(frontend, SCOPE_INTERNAL)? {
                Some(m) => (m, SCOPE_INTERNAL),
                None => {
                    steps.push("the internal scope is missing: refused".into());
                    out.steps = steps;
                    return Ok(out);
                }
            }
        } else {
            (master, SCOPE_EXTERNAL)
        };
        if svc.count == 0 {
            steps.push(if svc.flags & SVC_F_DROP_EMPTY != 0 {
                "no backend under the Local traffic policy: dropped".into()
            } else {
                "no usable endpoint: refused (ICMP port unreachable / ECONNREFUSED)".into()
            });
            out.steps = steps;
            return Ok(out);
        }
        if svc.flags & SVC_F_AFFINITY != 0 {
            let aff: HashMap<MapData, AffinityKey, AffinityValue> = op(
                "open",
                AFFINITY,
                HashMap::try_from(open(maps_dir, AFFINITY)?),
            )?;
            let key = AffinityKey {
                client: u64::from(u32::from(*client.ip()).to_be()),
                rev_nat_id: svc.rev_nat_id,
                kind: AFFINITY_CLIENT_IP,
                _pad: [0; 3],
            };
            match aff.get(&key, 0) {
                Ok(a) => {
                    let a_addr = addr_of(a.backend_id)?;
                    steps.push(format!(
                        "sessionAffinity ClientIP ({} s): {} last went to backend #{} {} (kept while used within the timeout)",
                        svc.affinity_timeout_s,
                        client.ip(),
                        a.backend_id,
                        a_addr.map_or("(gone)".to_string(), |x| x.to_string())
                    ));
                    if a_addr.is_some() {
                        out.backend = a_addr;
                        out.steps = steps;
                        return Ok(out);
                    }
                }
                Err(_) => steps.push(format!(
                    "sessionAffinity ClientIP ({} s): no entry for {} yet",
                    svc.affinity_timeout_s,
                    client.ip()
                )),
            }
        }
        let m = self.maglev_size()?;
        if svc.flags & SVC_F_MAGLEV != 0 && m != 0 {
            if client.port() == 0 {
                steps.push(format!("Maglev ring {} ({m} positions): the backend depends on the client port; give SRC as ip:port", svc.maglev_ring));
            } else {
                let h = maglev::flow_hash(
                    u32::from(*client.ip()).to_be(),
                    client.port().to_be(),
                    frontend.port.to_be(),
                    frontend.proto.number(),
                );
                let pos = h % m;
                let id = op(
                    "get",
                    MAGLEV,
                    self.maglev.get(&(svc.maglev_ring * m + pos), 0),
                )?;
                let a = addr_of(id)?;
                steps.push(format!(
                    "Maglev ring {}: flow hash {h:#010x} -> position {pos} of {m} -> backend #{id} {} (the same on every node)",
                    svc.maglev_ring,
                    a.map_or("(missing)".to_string(), |x| x.to_string())
                ));
                out.backend = a;
            }
        } else {
            let set = self.read_scope(frontend, scope_id, svc.count)?;
            let list: Vec<String> = set
                .iter()
                .filter_map(|b| b.addr)
                .map(|a| a.to_string())
                .collect();
            steps.push(format!(
                "random among {} backends: {}",
                set.len(),
                list.join(", ")
            ));
            if set.len() == 1 {
                out.backend = set[0].addr;
            }
        }
        out.steps = steps;
        Ok(out)
    }
}
