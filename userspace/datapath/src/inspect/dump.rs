//! The read side: what the maps hold, as typed values netctl prints and serialises (the JSON
//! strings are part of netctl's interface: keep them).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddrV4,
};

use petrel_common::{
    BACKEND_F_REMOTE, Backend, CT_DIR_FORWARD, CT_F_HAIRPIN, CT_F_HOST, CT_F_INBOUND, CT_F_MASQ,
    CT_F_NODE_SNAT, CT_F_REMAPPED, CT_F_SNAT, CT_SEEN_ACK, CT_SEEN_FIN, CT_SEEN_RST, CT_SEEN_SYN,
    CtKey, CtValue, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_MAGLEV, SVC_F_TWO_SCOPES,
    ct_connection_over, stat,
};
use serde::Serialize;

use super::names::FrontendName;
pub use crate::model::{BackendState, ServiceFlag};
use crate::{
    maps::{MapStore, MapsError, ServiceMaps, codec, writer::master},
    model::{Frontend, Proto},
};

/// What a service frontend is programmed to, as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgrammedService {
    pub frontend: Frontend,
    pub rev_nat_id: u32,
    pub flags: Vec<ServiceFlag>,
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
    pub state: BackendState,
    pub remote: bool,
}

fn programmed_backend(id: u32, b: &Backend) -> ProgrammedBackend {
    ProgrammedBackend {
        id,
        proto: Proto::from_number(b.proto),
        addr: Some(codec::backend_addr(b)),
        state: codec::backend_state(b),
        remote: b.flags & BACKEND_F_REMOTE != 0,
    }
}

/// One tracked connection, its forward and reply entries joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackedFlow {
    /// "tcp", "udp", "icmp" (ICMP echo: the identifier shows as the port), else "proto-N".
    pub proto: String,
    pub client: SocketAddrV4,
    /// Where the client sent it: the service frontend (for masquerade and inbound flows, the
    /// destination itself).
    pub frontend: SocketAddrV4,
    /// Where the flow is sent: the backend (None when the forward entry is missing).
    pub backend: Option<SocketAddrV4>,
    pub backend_id: u32,
    pub rev_nat_id: u32,
    /// "namespace/name" (with ":port-name"), from the names the agent publishes.
    pub service: Option<String>,
    /// The source the flow is rewritten to, when it is.
    pub snat: Option<SocketAddrV4>,
    /// Why the source is rewritten: "node-snat", "hairpin", "masquerade", "clash-remap"
    /// (joined with "+" when several apply).
    pub nat: Option<String>,
    /// Pod egress masqueraded to the node address (no service: `frontend` is the destination).
    pub masquerade: bool,
    /// A flow from outside the cluster to a pod: left untranslated, only tracked.
    pub inbound: bool,
    /// TCP: SYN_SENT, SYN_RECV, ESTABLISHED, HALF_CLOSED (a FIN one way), CLOSING (FINs both
    /// ways), RESET. Others: UNREPLIED, REPLIED. EXPIRED once over (the datapath treats it as
    /// absent; the garbage collector removes it), ORPHAN when one direction's entry is missing.
    pub state: &'static str,
    /// Seconds until the connection is over if no packet comes (0: over).
    pub expires_in_s: u32,
}

/// The protocol as netctl names it.
pub fn proto_name(proto: u8) -> String {
    match proto {
        petrel_common::IPPROTO_TCP => "tcp".into(),
        petrel_common::IPPROTO_UDP => "udp".into(),
        petrel_common::IPPROTO_ICMP => "icmp".into(),
        n => format!("proto-{n}"),
    }
}

/// The state of a connection from what each direction has seen, and the seconds until it is
/// over (`ct_connection_over`) at `now_s`.
pub fn ct_state(
    proto: u8,
    fwd: &CtValue,
    reply: Option<&CtValue>,
    now_s: u32,
) -> (&'static str, u32) {
    let left = |v: &CtValue| (v.expires_s.wrapping_sub(now_s) as i32).max(0) as u32;
    let Some(r) = reply else {
        return ("ORPHAN", left(fwd));
    };
    if ct_connection_over(fwd, Some(r), now_s) {
        return ("EXPIRED", 0);
    }
    let rst = |v: &CtValue| v.seen & CT_SEEN_RST != 0;
    let remaining = match (rst(fwd), rst(r)) {
        (true, true) => left(fwd).min(left(r)),
        (true, false) => left(fwd),
        (false, true) => left(r),
        (false, false) => left(fwd).max(left(r)),
    };
    let has = |v: &CtValue, bit: u8| v.seen & bit != 0;
    let state = if proto != petrel_common::IPPROTO_TCP {
        if r.seen == 0 { "UNREPLIED" } else { "REPLIED" }
    } else if rst(fwd) || rst(r) {
        "RESET"
    } else if has(fwd, CT_SEEN_FIN) && has(r, CT_SEEN_FIN) {
        "CLOSING"
    } else if has(fwd, CT_SEEN_FIN) || has(r, CT_SEEN_FIN) {
        "HALF_CLOSED"
    } else if has(fwd, CT_SEEN_ACK) && has(r, CT_SEEN_ACK) {
        "ESTABLISHED"
    } else if has(r, CT_SEEN_SYN) {
        "SYN_RECV"
    } else {
        "SYN_SENT"
    };
    (state, remaining)
}

fn nat_kind(flags: u16) -> Option<String> {
    let kinds: Vec<&str> = [
        (CT_F_MASQ, "masquerade"),
        (CT_F_HAIRPIN, "hairpin"),
        (CT_F_NODE_SNAT, "node-snat"),
        (CT_F_REMAPPED, "clash-remap"),
        (CT_F_HOST, "host"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect();
    (!kinds.is_empty()).then(|| kinds.join("+"))
}

/// The service name of a frontend, from the published names.
fn service_name(
    names: &BTreeMap<String, FrontendName>,
    proto: u8,
    frontend: SocketAddrV4,
) -> Option<String> {
    let fe = Frontend {
        addr: *frontend.ip(),
        port: frontend.port(),
        proto: Proto::from_number(proto)?,
    };
    names.get(&fe.to_string()).map(|n| {
        if n.port_name.is_empty() {
            n.service.clone()
        } else {
            format!("{}:{}", n.service, n.port_name)
        }
    })
}

/// The connections in `entries` (both directions of each), joined, sorted by client and
/// frontend; `now_s` is CLOCK_MONOTONIC seconds.
pub fn tracked_flows(
    entries: &[(CtKey, CtValue)],
    names: &BTreeMap<String, FrontendName>,
    now_s: u32,
) -> Vec<TrackedFlow> {
    let all: HashMap<CtKey, CtValue> = entries.iter().copied().collect();
    let mut out = Vec::new();
    for (k, v) in &all {
        let partner = v.partner(k);
        let other = all.get(&partner).filter(|p| p.partner(&partner) == *k);
        if k.dir == CT_DIR_FORWARD {
            let frontend = codec::socket(k.daddr_be, k.dport_be);
            let (state, expires_in_s) = ct_state(k.proto, v, other, now_s);
            out.push(TrackedFlow {
                proto: proto_name(k.proto),
                client: codec::socket(k.saddr_be, k.sport_be),
                frontend,
                backend: Some(codec::socket(v.dst_addr_be, v.dst_port_be)),
                backend_id: v.backend_id,
                rev_nat_id: v.rev_nat_id,
                service: (v.rev_nat_id != 0)
                    .then(|| service_name(names, k.proto, frontend))
                    .flatten(),
                snat: (v.flags & CT_F_SNAT != 0)
                    .then(|| codec::socket(v.src_addr_be, v.src_port_be)),
                nat: nat_kind(v.flags),
                masquerade: v.flags & CT_F_MASQ != 0,
                inbound: v.flags & CT_F_INBOUND != 0,
                state,
                expires_in_s,
            });
        } else if other.is_none() {
            // A reply entry without its forward entry: shown from what it holds (it rewrites
            // answers to come from the frontend and go to the client).
            let frontend = codec::socket(v.src_addr_be, v.src_port_be);
            out.push(TrackedFlow {
                proto: proto_name(k.proto),
                client: codec::socket(v.dst_addr_be, v.dst_port_be),
                frontend,
                backend: Some(codec::socket(k.saddr_be, k.sport_be)),
                backend_id: v.backend_id,
                rev_nat_id: v.rev_nat_id,
                service: (v.rev_nat_id != 0)
                    .then(|| service_name(names, k.proto, frontend))
                    .flatten(),
                snat: (v.flags & CT_F_SNAT != 0).then(|| codec::socket(k.daddr_be, k.dport_be)),
                nat: nat_kind(v.flags),
                masquerade: v.flags & CT_F_MASQ != 0,
                inbound: v.flags & CT_F_INBOUND != 0,
                state: "ORPHAN",
                expires_in_s: (v.expires_s.wrapping_sub(now_s) as i32).max(0) as u32,
            });
        }
    }
    out.sort_by(|a, b| (a.client, a.frontend, &a.proto).cmp(&(b.client, b.frontend, &b.proto)));
    out
}

/// The backends in the slots of one scope of `fe`.
pub(crate) fn read_scope(
    store: &impl MapStore,
    fe: Frontend,
    scope: u8,
    count: u16,
) -> Result<Vec<ProgrammedBackend>, MapsError> {
    let mut backends = Vec::with_capacity(count as usize);
    for slot in 1..=count {
        let Some(v) = store.service_get(&codec::service_key(fe, slot, scope))? else {
            continue;
        };
        let id = v.backend_id;
        backends.push(match store.backend_get(id)? {
            Some(b) => programmed_backend(id, &b),
            None => ProgrammedBackend {
                id,
                proto: None,
                addr: None,
                state: BackendState::Missing,
                remote: false,
            },
        });
    }
    Ok(backends)
}

impl<S: MapStore> ServiceMaps<S> {
    /// Every programmed frontend with its backends, sorted by frontend.
    pub fn dump(&self) -> Result<Vec<ProgrammedService>, MapsError> {
        let store = self.store();
        let masters: BTreeMap<Frontend, _> = store
            .services()?
            .into_iter()
            .filter(|(k, _)| k.slot == 0 && k.scope == SCOPE_EXTERNAL)
            .filter_map(|(k, v)| Some((codec::frontend(&k)?, v)))
            .collect();
        let mut out = Vec::with_capacity(masters.len());
        for (fe, m) in masters {
            let internal_backends = match master(store, fe, SCOPE_INTERNAL)? {
                Some(im) if m.flags & SVC_F_TWO_SCOPES != 0 => {
                    Some(read_scope(store, fe, SCOPE_INTERNAL, im.count)?)
                }
                _ => None,
            };
            out.push(ProgrammedService {
                frontend: fe,
                rev_nat_id: m.rev_nat_id,
                flags: codec::service_flags(m.flags),
                affinity_timeout_s: (m.flags & SVC_F_AFFINITY != 0).then_some(m.affinity_timeout_s),
                maglev_ring: (m.flags & SVC_F_MAGLEV != 0).then_some(m.maglev_ring),
                backends: read_scope(store, fe, SCOPE_EXTERNAL, m.count)?,
                internal_backends,
            });
        }
        Ok(out)
    }

    /// Every backend in the backend map, by id.
    pub fn backends(&self) -> Result<Vec<ProgrammedBackend>, MapsError> {
        let mut out: Vec<ProgrammedBackend> = self
            .store()
            .backends()?
            .iter()
            .map(|(id, b)| programmed_backend(*id, b))
            .collect();
        out.sort_by_key(|b| b.id);
        Ok(out)
    }

    /// Datapath counters summed over CPUs, by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        let mut out = Vec::with_capacity(stat::NAMES.len());
        for (i, name) in (0u32..).zip(stat::NAMES) {
            out.push((name, self.store().stat(i)?));
        }
        Ok(out)
    }

    /// The connections in conntrack (at most `limit` entries read), joined and named with
    /// `names` (the agent's published frontend names).
    pub fn conntrack(
        &self,
        limit: usize,
        names: &BTreeMap<String, FrontendName>,
    ) -> Result<Vec<TrackedFlow>, MapsError> {
        let entries = self.store().ct_entries(limit)?;
        let now_s = (crate::conntrack::monotonic_ns() / 1_000_000_000) as u32;
        Ok(tracked_flows(&entries, names, now_s))
    }
}

#[cfg(test)]
mod tests {
    use petrel_common::{CT_SEEN_PKT, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

    use super::*;

    const NOW: u32 = 5000;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().expect("address")
    }

    /// The two entries of a flow from `client` to `frontend`, sent from `src` to `dst`.
    fn pair(
        proto: u8,
        client: &str,
        frontend: &str,
        src: &str,
        dst: &str,
        flags: u16,
        seen: (u8, u8),
    ) -> [(CtKey, CtValue); 2] {
        let (c, f, s, d) = (a(client), a(frontend), a(src), a(dst));
        let key = CtKey {
            saddr_be: codec::addr_be(*c.ip()),
            daddr_be: codec::addr_be(*f.ip()),
            sport_be: c.port().to_be(),
            dport_be: f.port().to_be(),
            proto,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        let fwd = CtValue {
            src_addr_be: codec::addr_be(*s.ip()),
            src_port_be: s.port().to_be(),
            dst_addr_be: codec::addr_be(*d.ip()),
            dst_port_be: d.port().to_be(),
            backend_id: u32::from(flags & CT_F_MASQ == 0),
            rev_nat_id: if flags & CT_F_MASQ == 0 { 3 } else { 0 },
            expires_s: NOW + 100,
            flags,
            seen: seen.0,
            ..Default::default()
        };
        let reply = CtValue {
            src_addr_be: key.daddr_be,
            src_port_be: key.dport_be,
            dst_addr_be: key.saddr_be,
            dst_port_be: key.sport_be,
            expires_s: NOW + 40,
            seen: seen.1,
            ..fwd
        };
        [(key, fwd), (fwd.partner(&key), reply)]
    }

    #[test]
    fn connections_are_joined_named_and_given_their_state_and_lifetime() {
        let est = CT_SEEN_PKT | CT_SEEN_ACK;
        let mut entries = Vec::new();
        entries.extend(pair(
            IPPROTO_TCP,
            "10.244.0.2:40000",
            "10.96.0.10:80",
            "10.244.0.2:61234",
            "10.244.1.5:8080",
            CT_F_SNAT | CT_F_REMAPPED,
            (est | CT_SEEN_SYN, est | CT_SEEN_SYN),
        ));
        entries.extend(pair(
            IPPROTO_UDP,
            "10.244.0.3:5353",
            "1.1.1.1:53",
            "192.168.1.10:62000",
            "1.1.1.1:53",
            CT_F_SNAT | CT_F_MASQ,
            (CT_SEEN_PKT, 0),
        ));
        entries.extend(pair(
            IPPROTO_ICMP,
            "10.244.0.4:7",
            "10.96.0.10:0",
            "10.244.0.4:7",
            "10.244.1.5:0",
            0,
            (CT_SEEN_PKT, CT_SEEN_PKT),
        ));
        // A SYN that got no answer, whose forward entry is gone: only the reply entry is left.
        let [_, orphan] = pair(
            IPPROTO_TCP,
            "10.244.0.5:40001",
            "10.96.0.10:80",
            "10.244.0.5:40001",
            "10.244.1.5:8080",
            0,
            (CT_SEEN_SYN, 0),
        );
        entries.push(orphan);
        let names = BTreeMap::from([(
            "10.96.0.10:80/TCP".to_string(),
            FrontendName {
                service: "default/web".into(),
                port_name: "http".into(),
                kind: "ClusterIP".into(),
                external_traffic_policy: "Cluster".into(),
                internal_traffic_policy: "Cluster".into(),
            },
        )]);
        let flows = tracked_flows(&entries, &names, NOW);
        let lines: Vec<String> = flows
            .iter()
            .map(|f| {
                format!(
                    "{} {} -> {} => {} #{} {} nat={} via {} {} {}s",
                    f.proto,
                    f.client,
                    f.frontend,
                    f.backend.map_or("-".into(), |b| b.to_string()),
                    f.backend_id,
                    f.service.as_deref().unwrap_or("-"),
                    f.nat.as_deref().unwrap_or("-"),
                    f.snat.map_or("-".into(), |s| s.to_string()),
                    f.state,
                    f.expires_in_s
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                "tcp 10.244.0.2:40000 -> 10.96.0.10:80 => 10.244.1.5:8080 #1 default/web:http nat=clash-remap via 10.244.0.2:61234 ESTABLISHED 100s",
                "udp 10.244.0.3:5353 -> 1.1.1.1:53 => 1.1.1.1:53 #0 - nat=masquerade via 192.168.1.10:62000 UNREPLIED 100s",
                "icmp 10.244.0.4:7 -> 10.96.0.10:0 => 10.244.1.5:0 #1 - nat=- via - REPLIED 100s",
                "tcp 10.244.0.5:40001 -> 10.96.0.10:80 => 10.244.1.5:8080 #1 default/web:http nat=- via - ORPHAN 40s",
            ]
        );
    }

    #[test]
    fn tcp_states_follow_what_each_direction_saw() {
        let v = |seen: u8, left: u32| CtValue {
            seen,
            expires_s: NOW + left,
            ..Default::default()
        };
        let (syn, ack, fin, rst) = (CT_SEEN_SYN, CT_SEEN_ACK, CT_SEEN_FIN, CT_SEEN_RST);
        let tcp = IPPROTO_TCP;
        let cases = [
            (v(syn, 60), v(0, 60), ("SYN_SENT", 60)),
            (v(syn, 60), v(syn | ack, 60), ("SYN_RECV", 60)),
            (v(syn | ack, 600), v(syn | ack, 500), ("ESTABLISHED", 600)),
            (v(ack | fin, 10), v(ack, 500), ("HALF_CLOSED", 500)),
            (v(ack | fin, 10), v(ack | fin, 8), ("CLOSING", 10)),
            (v(ack | rst, 10), v(ack, 500), ("RESET", 10)),
        ];
        for (f, r, want) in cases {
            assert_eq!(ct_state(tcp, &f, Some(&r), NOW), want, "{f:?} {r:?}");
        }
        assert_eq!(
            ct_state(tcp, &v(ack, 0), Some(&v(ack, 0)), NOW),
            ("EXPIRED", 0)
        );
    }
}
