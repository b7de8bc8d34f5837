//! Routes to other nodes' pod CIDRs, applied with rtnetlink in the agent's network namespace.
//!
//! * Native mode: `<podCIDR> via <node InternalIP>`, for nodes on one L2 segment.
//! * VXLAN mode: a `petrel.vxlan` device (VNI 1, UDP 8472 by default, no learning) on the
//!   interface holding the node address; per remote node `<podCIDR> via <its network address>
//!   dev petrel.vxlan onlink`, a permanent neighbour entry mapping that next hop to the node's
//!   VTEP MAC, and an FDB entry sending that MAC to the node's address (as flannel does it).
//!
//! Every route petrel adds carries its own protocol number (`ROUTE_PROTOCOL`): only those are
//! ever replaced or removed, so routes of anyone else are left alone. Reconciling is idempotent
//! and continues past a failed entry, reporting every failure.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol},
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::plan::{RemoteNode, vtep_addr, vtep_mac};

/// The route protocol number petrel's routes carry (`ip route show proto 112`); not one that
/// /etc/iproute2/rt_protos or a known routing daemon uses.
pub const ROUTE_PROTOCOL: u8 = 112;
/// The overlay device.
pub const VXLAN_IFNAME: &str = "petrel.vxlan";
/// Bytes VXLAN adds to each packet (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8).
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    Vxlan { vni: u32, port: u16 },
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(
        "no interface holds the node address {0}: pass the node's address with --node-ip, or fix the Node's InternalIP"
    )]
    NoUplink(Ipv4Addr),
    #[error("{0} vanished right after it was created (another process deleting it?)")]
    Vanished(&'static str),
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RouteError {
    let op = op.into();
    move |source| RouteError::Netlink { op, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The interface the node address lives on: where VXLAN packets and routed pod traffic leave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
}

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Applied {
    pub added: usize,
    pub removed: usize,
    /// Entries that could not be written (the rest were).
    pub errors: Vec<String>,
}

/// Owns this node's routes to other nodes.
pub struct Router {
    h: Handle,
    mode: Mode,
    node_ip: Ipv4Addr,
    uplink: Uplink,
    vxlan: Option<u32>,
}

/// A petrel route as the kernel holds it: next hop and, in overlay mode, the device.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hop {
    gateway: Ipv4Addr,
    oif: Option<u32>,
}

async fn connect() -> Result<Handle, RouteError> {
    let (conn, h, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
    tokio::spawn(conn);
    Ok(h)
}

impl Router {
    /// Finds the uplink and, in VXLAN mode, creates the overlay device or keeps the one already
    /// there when it matches (a restarted agent must not disturb traffic).
    /// `proc_sys_net` is where the host's /proc/sys/net is visible.
    pub async fn new(
        mode: Mode,
        node_ip: Ipv4Addr,
        proc_sys_net: &Path,
    ) -> Result<Router, RouteError> {
        let h = connect().await?;
        let uplink = find_uplink(&h, node_ip).await?;
        let vxlan = match mode {
            Mode::Native => None,
            Mode::Vxlan { vni, port } => {
                let index = ensure_vxlan(&h, &uplink, node_ip, vni, port).await?;
                // Decapsulated packets from other nodes may carry sources (a node address
                // SNATed for a NodePort) that the routing table reaches through the uplink: no
                // reverse-path filter here.
                for (key, value) in [("rp_filter", "0"), ("forwarding", "1")] {
                    let path = proc_sys_net.join(format!("ipv4/conf/{VXLAN_IFNAME}/{key}"));
                    if let Err(e) = std::fs::write(&path, value) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot set sysctl");
                    }
                }
                Some(index)
            }
        };
        Ok(Router {
            h,
            mode,
            node_ip,
            uplink,
            vxlan,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    pub fn uplink(&self) -> &Uplink {
        &self.uplink
    }

    /// The MTU pods get: the uplink's, less the encapsulation in overlay mode.
    pub fn pod_mtu(&self) -> u32 {
        match self.mode {
            Mode::Native => self.uplink.mtu,
            Mode::Vxlan { .. } => self.uplink.mtu - VXLAN_OVERHEAD,
        }
    }

    fn hop(&self, r: &RemoteNode) -> Hop {
        match self.vxlan {
            None => Hop {
                gateway: r.node_ip,
                oif: None,
            },
            Some(idx) => Hop {
                gateway: vtep_addr(r.pod_cidr),
                oif: Some(idx),
            },
        }
    }

    /// Makes petrel's routes (and, in overlay mode, neighbour and FDB entries) exactly those
    /// for `remotes`.
    pub async fn apply(&mut self, remotes: &[RemoteNode]) -> Result<Applied, RouteError> {
        let mut out = Applied::default();
        let want: BTreeMap<Ipv4Net, Hop> =
            remotes.iter().map(|r| (r.pod_cidr, self.hop(r))).collect();
        let have = petrel_routes(&self.h).await?;
        if let Some(vx) = self.vxlan {
            // Neighbour and FDB entries before routes: a route never points at an unresolved
            // next hop.
            self.apply_vxlan_entries(vx, remotes, &mut out).await?;
        }
        for (dst, hop) in &want {
            if have.get(dst).map(|(h, _)| h) == Some(hop) {
                continue;
            }
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .gateway(hop.gateway)
                .protocol(RouteProtocol::from(ROUTE_PROTOCOL));
            if let Some(oif) = hop.oif {
                b = b.output_interface(oif).onlink();
            }
            match self.h.route().add(b.build()).replace().execute().await {
                Ok(()) => out.added += 1,
                Err(e) => out.errors.push(route_error(dst, hop, &e)),
            }
        }
        for (dst, (_, msg)) in have {
            if want.contains_key(&dst) {
                continue;
            }
            match self.h.route().del(msg).execute().await {
                Ok(()) => out.removed += 1,
                Err(e) if errno(&e) == Some(libc::ESRCH) => {}
                Err(e) => out.errors.push(format!("removing route {dst}: {e}")),
            }
        }
        Ok(out)
    }

    async fn apply_vxlan_entries(
        &self,
        vx: u32,
        remotes: &[RemoteNode],
        out: &mut Applied,
    ) -> Result<(), RouteError> {
        let hops: BTreeSet<Ipv4Addr> = remotes.iter().map(|r| vtep_addr(r.pod_cidr)).collect();
        let macs: BTreeSet<[u8; 6]> = remotes.iter().map(|r| vtep_mac(r.node_ip)).collect();
        for r in remotes {
            let (hop, mac) = (vtep_addr(r.pod_cidr), vtep_mac(r.node_ip));
            let neigh = self
                .h
                .neighbours()
                .add(vx, IpAddr::V4(hop))
                .link_layer_address(&mac)
                .replace()
                .execute()
                .await;
            if let Err(e) = neigh {
                out.errors
                    .push(format!("neighbour {hop} for node {}: {e}", r.name));
            }
            let fdb = self
                .h
                .neighbours()
                .add_bridge(vx, &mac)
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(r.node_ip))
                .replace()
                .execute()
                .await;
            if let Err(e) = fdb {
                out.errors.push(format!(
                    "FDB entry to {} for node {}: {e}",
                    r.node_ip, r.name
                ));
            }
        }
        // Entries of nodes that are gone. The device is petrel's alone, so everything on it that
        // is not wanted goes.
        let stale: Vec<NeighbourMessage> = self
            .h
            .neighbours()
            .get()
            .execute()
            .try_filter(|n| futures::future::ready(n.header.ifindex == vx))
            .try_collect()
            .await
            .map_err(nl("listing neighbours"))?;
        for n in stale {
            let keep = match n.header.family {
                AddressFamily::Inet => neigh_dst(&n).is_some_and(|a| hops.contains(&a)),
                AddressFamily::Bridge => neigh_mac(&n).is_some_and(|m| macs.contains(&m)),
                _ => true,
            };
            if !keep {
                if let Err(e) = self.h.neighbours().del(n).execute().await {
                    out.errors
                        .push(format!("removing a stale VXLAN entry: {e}"));
                }
            }
        }
        Ok(())
    }
}

fn route_error(dst: &Ipv4Net, hop: &Hop, e: &rtnetlink::Error) -> String {
    let hint = if hop.oif.is_none() && errno(e) == Some(libc::ENETUNREACH) {
        ": the node is not on a directly connected network; native routing needs every node on one L2 segment (use --routing vxlan)"
    } else {
        ""
    };
    format!("adding route {dst} via {}: {e}{hint}", hop.gateway)
}

fn neigh_dst(n: &NeighbourMessage) -> Option<Ipv4Addr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn neigh_mac(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => b.as_slice().try_into().ok(),
        _ => None,
    })
}

/// petrel's IPv4 routes in the main table, by destination.
async fn petrel_routes(h: &Handle) -> Result<BTreeMap<Ipv4Net, (Hop, RouteMessage)>, RouteError> {
    let all: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    let mut out = BTreeMap::new();
    for m in all {
        if m.header.protocol != RouteProtocol::from(ROUTE_PROTOCOL)
            || m.header.table != RouteHeader::RT_TABLE_MAIN
        {
            continue;
        }
        let (mut dst, mut gateway, mut oif) = (None, None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let Some(net) = dst.and_then(|d| Ipv4Net::new(d, m.header.destination_prefix_length).ok())
        else {
            continue;
        };
        // A native route's device is whatever the kernel picked: compare next hops only.
        let onlink = m.header.flags.contains(RouteFlags::Onlink);
        let hop = Hop {
            gateway: gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
            oif: if onlink { oif } else { None },
        };
        out.insert(net, (hop, m));
    }
    Ok(out)
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, RouteError> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"))(e)),
    }
}

fn link_name(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_mtu(l: &LinkMessage) -> u32 {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500)
}

async fn find_uplink(h: &Handle, node_ip: Ipv4Addr) -> Result<Uplink, RouteError> {
    // The whole dump is read: a stream dropped half-way makes the netlink connection log
    // "failed to forward response back to the handle" for the rest.
    let addresses: Vec<_> = h
        .address()
        .get()
        .set_address_filter(IpAddr::V4(node_ip))
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses"))?;
    let index = addresses
        .iter()
        .find(|a| {
            a.attributes.iter().any(|x| {
                matches!(x, AddressAttribute::Address(IpAddr::V4(ip)) | AddressAttribute::Local(IpAddr::V4(ip)) if *ip == node_ip)
            })
        })
        .map(|a| a.header.index)
        .ok_or(RouteError::NoUplink(node_ip))?;
    let link = h
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(nl(format!("looking up link {index}")))?
        .ok_or(RouteError::NoUplink(node_ip))?;
    Ok(Uplink {
        index,
        name: link_name(&link),
        mtu: link_mtu(&link),
    })
}

/// Whether an existing VXLAN device was made with these parameters.
fn vxlan_matches(l: &LinkMessage, uplink: u32, local: Ipv4Addr, vni: u32, port: u16) -> bool {
    let infos = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    let Some(data) = infos.into_iter().flatten().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
        _ => None,
    }) else {
        return false;
    };
    let has = |x: &InfoVxlan| data.contains(x);
    has(&InfoVxlan::Id(vni))
        && has(&InfoVxlan::Port(port))
        && has(&InfoVxlan::Local(local))
        && has(&InfoVxlan::Link(uplink))
}

async fn ensure_vxlan(
    h: &Handle,
    uplink: &Uplink,
    node_ip: Ipv4Addr,
    vni: u32,
    port: u16,
) -> Result<u32, RouteError> {
    let mtu = uplink.mtu - VXLAN_OVERHEAD;
    let mac = vtep_mac(node_ip).to_vec();
    let index = match link_by_name(h, VXLAN_IFNAME).await? {
        Some(l) if vxlan_matches(&l, uplink.index, node_ip, vni, port) => l.header.index,
        existing => {
            if let Some(l) = existing {
                tracing::warn!(
                    device = VXLAN_IFNAME,
                    "VXLAN device has other parameters (node address, VNI, port or uplink changed): recreating it"
                );
                h.link()
                    .del(l.header.index)
                    .execute()
                    .await
                    .map_err(nl(format!("deleting {VXLAN_IFNAME}")))?;
            }
            h.link()
                .add(
                    LinkVxlan::new(VXLAN_IFNAME, vni)
                        .dev(uplink.index)
                        .local(node_ip)
                        .port(port)
                        .learning(false)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("creating {VXLAN_IFNAME}")))?;
            link_by_name(h, VXLAN_IFNAME)
                .await?
                .ok_or(RouteError::Vanished(VXLAN_IFNAME))?
                .header
                .index
        }
    };
    // MTU, MAC and state are set every time: cheap, and they follow the uplink's MTU.
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .mtu(mtu)
                .address(mac)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("configuring {VXLAN_IFNAME}")))?;
    Ok(index)
}

/// Removes every petrel route and the VXLAN device (uninstall). Returns how many routes went.
pub async fn remove_all() -> Result<usize, RouteError> {
    let h = connect().await?;
    let mut n = 0;
    for (_, (_, msg)) in petrel_routes(&h).await? {
        match h.route().del(msg).execute().await {
            Ok(()) => n += 1,
            Err(e) if errno(&e) == Some(libc::ESRCH) => {}
            Err(e) => return Err(nl("removing a petrel route")(e)),
        }
    }
    if let Some(l) = link_by_name(&h, VXLAN_IFNAME).await? {
        h.link()
            .del(l.header.index)
            .execute()
            .await
            .map_err(nl(format!("deleting {VXLAN_IFNAME}")))?;
    }
    Ok(n)
}
