//! `netctl explain`: which backend a flow gets and why, following the order of the datapath's own
//! decision (ebpf/programs/src/lb.rs `select`): conntrack, scope, source ranges, empty service,
//! affinity, Maglev or random slot. WARNING: a change to that order in lb.rs must be made here too.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

use petrel_common::{
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_DROP_EMPTY, SVC_F_MAGLEV,
    SVC_F_SRC_RANGES, SVC_F_TWO_SCOPES,
};
use serde::{Serialize, Serializer};

use super::dump::{ct_state, read_scope};
use crate::{
    maglev,
    maps::{MapStore, MapsError, ServiceMaps, codec, writer::master},
    model::Frontend,
};

/// Where the flow comes from, which decides the backend set under a Local traffic policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// From a pod or a process on the node.
    Internal,
    /// Arrived from outside the node.
    External,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Internal => "internal",
            Scope::External => "external",
        })
    }
}

/// One step of the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Conntrack {
        backend_id: u32,
        addr: SocketAddrV4,
        /// The connection's state (`dump::ct_state`) and seconds until it is over.
        state: &'static str,
        expires_in_s: u32,
    },
    ConntrackExpired,
    ConntrackBackendGone {
        backend_id: u32,
    },
    NotAService {
        frontend: Frontend,
    },
    InternalScope,
    InternalScopeMissing,
    /// loadBalancerSourceRanges: the client is inside `range` (the longest match).
    SourceAllowed {
        client: Ipv4Addr,
        range: ipnet::Ipv4Net,
    },
    /// loadBalancerSourceRanges: the client is in none of the ranges.
    SourceRefused {
        client: Ipv4Addr,
        ranges: usize,
    },
    /// loadBalancerSourceRanges with no client address (a socket-LB connect before the source
    /// is known): left to the TC path.
    SourceUnknown,
    EmptyDropped,
    EmptyRefused,
    AffinityHit {
        timeout_s: u32,
        client: Ipv4Addr,
        backend_id: u32,
        addr: Option<SocketAddrV4>,
    },
    AffinityMiss {
        timeout_s: u32,
        client: Ipv4Addr,
    },
    MaglevNeedsPort {
        ring: u32,
        size: u32,
    },
    Maglev {
        ring: u32,
        hash: u32,
        position: u32,
        size: u32,
        backend_id: u32,
        addr: Option<SocketAddrV4>,
    },
    Random {
        count: usize,
        addrs: Vec<SocketAddrV4>,
    },
}

fn or(addr: Option<SocketAddrV4>, absent: &str) -> String {
    addr.map_or(absent.to_string(), |a| a.to_string())
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Conntrack {
                backend_id,
                addr,
                state,
                expires_in_s,
            } => write!(
                f,
                "in conntrack ({state}, over in {expires_in_s} s without packets): pinned to backend #{backend_id} {addr}"
            ),
            Step::ConntrackExpired => f.write_str(
                "a conntrack entry that is over (the datapath treats it as absent; the garbage collector removes it)",
            ),
            Step::ConntrackBackendGone { backend_id } => write!(
                f,
                "in conntrack, but backend #{backend_id} is gone: the flow is re-balanced"
            ),
            Step::NotAService { frontend } => write!(
                f,
                "{frontend} is not a service frontend: the packet is not translated"
            ),
            Step::InternalScope => f.write_str(
                "a Local traffic policy splits the service: in-cluster traffic uses the internal backend set",
            ),
            Step::InternalScopeMissing => f.write_str("the internal scope is missing: refused"),
            Step::SourceAllowed { client, range } => write!(
                f,
                "loadBalancerSourceRanges: {client} is inside {range}: allowed"
            ),
            Step::SourceRefused { client, ranges } => write!(
                f,
                "loadBalancerSourceRanges: {client} is in none of the {ranges} ranges: dropped (no reply, counted in drop_src_range)"
            ),
            Step::SourceUnknown => f.write_str(
                "loadBalancerSourceRanges with no client address: socket-LB leaves the flow to the TC path, which checks its source",
            ),
            Step::EmptyDropped => f.write_str("no backend under the Local traffic policy: dropped"),
            Step::EmptyRefused => f.write_str(
                "no usable endpoint: refused (ICMP port unreachable / ECONNREFUSED)",
            ),
            Step::AffinityHit { timeout_s, client, backend_id, addr } => write!(
                f,
                "sessionAffinity ClientIP ({timeout_s} s): {client} last went to backend #{backend_id} {} (kept while used within the timeout)",
                or(*addr, "(gone)")
            ),
            Step::AffinityMiss { timeout_s, client } => write!(
                f,
                "sessionAffinity ClientIP ({timeout_s} s): no entry for {client} yet"
            ),
            Step::MaglevNeedsPort { ring, size } => write!(
                f,
                "Maglev ring {ring} ({size} positions): the backend depends on the client port; give SRC as ip:port"
            ),
            Step::Maglev { ring, hash, position, size, backend_id, addr } => write!(
                f,
                "Maglev ring {ring}: flow hash {hash:#010x} -> position {position} of {size} -> backend #{backend_id} {} (the same on every node)",
                or(*addr, "(missing)")
            ),
            Step::Random { count, addrs } => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                write!(f, "random among {count} backends: {}", list.join(", "))
            }
        }
    }
}

/// Steps are shown and serialised as their sentences (netctl's JSON carries the text).
impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What `netctl explain` found out about one flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub frontend: Frontend,
    pub scope: Scope,
    /// The backend the flow gets, when it is determined.
    pub backend: Option<SocketAddrV4>,
    /// Each step of the decision, in order.
    pub steps: Vec<Step>,
}

fn addr_of(store: &impl MapStore, id: u32) -> Result<Option<SocketAddrV4>, MapsError> {
    Ok(store.backend_get(id)?.map(|b| codec::backend_addr(&b)))
}

impl<S: MapStore> ServiceMaps<S> {
    /// Explains which backend a flow from `client` (port 0: any) to `frontend` gets and why.
    pub fn explain(
        &self,
        client: SocketAddrV4,
        frontend: Frontend,
        external: bool,
    ) -> Result<Explanation, MapsError> {
        let scope = if external {
            Scope::External
        } else {
            Scope::Internal
        };
        let mut out = Explanation {
            frontend,
            scope,
            backend: None,
            steps: Vec::new(),
        };
        out.backend = decide(self, client, frontend, external, &mut out.steps)?;
        Ok(out)
    }
}

/// The decision itself; each step taken is pushed to `steps`. One function on purpose: it reads
/// top to bottom as lb.rs `select` does.
fn decide<S: MapStore>(
    maps: &ServiceMaps<S>,
    client: SocketAddrV4,
    frontend: Frontend,
    external: bool,
    steps: &mut Vec<Step>,
) -> Result<Option<SocketAddrV4>, MapsError> {
    let store = maps.store();
    if client.port() != 0 {
        let key = codec::ct_key(client, frontend);
        if let Some(v) = store.ct_get(&key)? {
            let reply = store.ct_get(&v.partner(&key))?;
            let now_s = (crate::conntrack::monotonic_ns() / 1_000_000_000) as u32;
            let (state, expires_in_s) = ct_state(key.proto, &v, reply.as_ref(), now_s);
            let backend_id = v.backend_id;
            // As the datapath checks it: the backend must still be at the address the flow
            // was sent to.
            let sent_to = codec::socket(v.dst_addr_be, v.dst_port_be);
            if v.expired(now_s) {
                steps.push(Step::ConntrackExpired);
            } else {
                match addr_of(store, backend_id)? {
                    Some(addr) if addr == sent_to => {
                        steps.push(Step::Conntrack {
                            backend_id,
                            addr,
                            state,
                            expires_in_s,
                        });
                        return Ok(Some(addr));
                    }
                    _ => steps.push(Step::ConntrackBackendGone { backend_id }),
                }
            }
        }
    }
    let Some(ext) = master(store, frontend, SCOPE_EXTERNAL)? else {
        steps.push(Step::NotAService { frontend });
        return Ok(None);
    };
    let (svc, scope_id) = if !external && ext.flags & SVC_F_TWO_SCOPES != 0 {
        steps.push(Step::InternalScope);
        match master(store, frontend, SCOPE_INTERNAL)? {
            Some(m) => (m, SCOPE_INTERNAL),
            None => {
                steps.push(Step::InternalScopeMissing);
                return Ok(None);
            }
        }
    } else {
        (ext, SCOPE_EXTERNAL)
    };
    if svc.flags & SVC_F_SRC_RANGES != 0 {
        let client_ip = *client.ip();
        if client_ip.is_unspecified() {
            steps.push(Step::SourceUnknown);
            return Ok(None);
        }
        let ranges: Vec<ipnet::Ipv4Net> = store
            .src_ranges()?
            .into_iter()
            .filter(|(id, _)| *id == svc.rev_nat_id)
            .map(|(_, net)| net)
            .collect();
        match ranges
            .iter()
            .filter(|n| n.contains(&client_ip))
            .max_by_key(|n| n.prefix_len())
        {
            Some(range) => steps.push(Step::SourceAllowed {
                client: client_ip,
                range: *range,
            }),
            None => {
                steps.push(Step::SourceRefused {
                    client: client_ip,
                    ranges: ranges.len(),
                });
                return Ok(None);
            }
        }
    }
    if svc.count == 0 {
        steps.push(if svc.flags & SVC_F_DROP_EMPTY != 0 {
            Step::EmptyDropped
        } else {
            Step::EmptyRefused
        });
        return Ok(None);
    }
    let timeout_s = svc.affinity_timeout_s;
    if svc.flags & SVC_F_AFFINITY != 0 {
        let key = codec::affinity_key(*client.ip(), svc.rev_nat_id);
        match store.affinity_get(&key)? {
            Some(a) => {
                let addr = addr_of(store, a.backend_id)?;
                steps.push(Step::AffinityHit {
                    timeout_s,
                    client: *client.ip(),
                    backend_id: a.backend_id,
                    addr,
                });
                if addr.is_some() {
                    return Ok(addr);
                }
            }
            None => steps.push(Step::AffinityMiss {
                timeout_s,
                client: *client.ip(),
            }),
        }
    }
    let size = maps.maglev_size()?;
    if svc.flags & SVC_F_MAGLEV != 0 && size != 0 {
        let ring = svc.maglev_ring;
        if client.port() == 0 {
            steps.push(Step::MaglevNeedsPort { ring, size });
            return Ok(None);
        }
        let hash = maglev::flow_hash(
            codec::addr_be(*client.ip()),
            client.port().to_be(),
            frontend.port.to_be(),
            frontend.proto.number(),
        );
        let position = hash % size;
        let backend_id = store.maglev_get(ring * size + position)?;
        let addr = addr_of(store, backend_id)?;
        steps.push(Step::Maglev {
            ring,
            hash,
            position,
            size,
            backend_id,
            addr,
        });
        return Ok(addr);
    }
    let set = read_scope(store, frontend, scope_id, svc.count)?;
    steps.push(Step::Random {
        count: set.len(),
        addrs: set.iter().filter_map(|b| b.addr).collect(),
    });
    Ok(if set.len() == 1 { set[0].addr } else { None })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::{
        maps::fake::FakeMaps,
        model::{BackendSpec, Endpoint, Proto, ServiceEntry},
    };

    #[test]
    fn source_ranges_are_a_step_of_the_decision() {
        let mut maps = ServiceMaps::new(FakeMaps::new());
        let backend = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 1), 8080);
        maps.upsert_backend(&BackendSpec {
            id: 1,
            addr: backend,
            proto: Proto::Tcp,
            terminating: false,
            remote: false,
        })
        .expect("backend");
        let fe = Frontend {
            addr: Ipv4Addr::new(203, 0, 113, 10),
            port: 80,
            proto: Proto::Tcp,
        };
        maps.upsert_service(&ServiceEntry {
            external: true,
            source_ranges: vec![
                "192.0.2.0/24".parse().expect("net"),
                "192.0.2.128/25".parse().expect("net"),
            ],
            ..ServiceEntry::new(fe, 5, vec![Endpoint::ready(1)])
        })
        .expect("service");
        let from = |ip: [u8; 4]| SocketAddrV4::new(Ipv4Addr::from(ip), 0);

        let inside = maps
            .explain(from([192, 0, 2, 200]), fe, true)
            .expect("explain");
        assert_eq!(inside.backend, Some(backend));
        assert_eq!(
            inside.steps[0].to_string(),
            "loadBalancerSourceRanges: 192.0.2.200 is inside 192.0.2.128/25: allowed",
            "the longest match is named"
        );

        let outside = maps
            .explain(from([198, 51, 100, 1]), fe, true)
            .expect("explain");
        assert_eq!(outside.backend, None);
        assert_eq!(
            outside.steps,
            [Step::SourceRefused {
                client: Ipv4Addr::new(198, 51, 100, 1),
                ranges: 2
            }]
        );
        assert!(outside.steps[0].to_string().contains("dropped"));

        let unknown = maps
            .explain(from([0, 0, 0, 0]), fe, false)
            .expect("explain");
        assert_eq!(unknown.steps, [Step::SourceUnknown]);
    }
}
