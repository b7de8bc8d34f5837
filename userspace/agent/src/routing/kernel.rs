//! Routes to other nodes' pod CIDRs, applied over a blocking rtnetlink socket (petrel-netlink)
//! in the agent's network namespace. Every function here blocks: callers on the async runtime
//! run them with `tokio::task::spawn_blocking`.
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
    net::Ipv4Addr,
    path::Path,
};

use ipnet::Ipv4Net;
use petrel_netlink::{
    LinkId, NetlinkError, Route4, Socket, Sysctl, VxlanSpec, link, neigh,
    packet::{
        AddressFamily,
        neighbour::NeighbourMessage,
        route::{RouteMessage, RouteProtocol},
    },
};

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
    /// The message names the operation and its object ("listing routes: ...").
    #[error("{0}")]
    Netlink(#[source] NetlinkError),
    #[error(
        "no interface holds the node address {0}: pass the node's address with --node-ip, or fix the Node's InternalIP"
    )]
    NoUplink(Ipv4Addr),
    #[error("{0} vanished right after it was created (another process deleting it?)")]
    Vanished(&'static str),
}

impl From<NetlinkError> for RouteError {
    fn from(e: NetlinkError) -> RouteError {
        RouteError::Netlink(e)
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
    sock: Socket,
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

impl Hop {
    fn route(&self, dst: Ipv4Net) -> Route4 {
        Route4 {
            gateway: Some(self.gateway),
            oif: self.oif,
            protocol: RouteProtocol::from(ROUTE_PROTOCOL),
            // The overlay next hop is on the VXLAN device although no address there says so.
            onlink: self.oif.is_some(),
            ..Route4::new(dst)
        }
    }
}

impl Router {
    /// Finds the uplink and, in VXLAN mode, creates the overlay device or keeps the one already
    /// there when it matches (a restarted agent must not disturb traffic).
    /// `proc_sys_net` is where the host's /proc/sys/net is visible.
    pub fn new(mode: Mode, node_ip: Ipv4Addr, proc_sys_net: &Path) -> Result<Router, RouteError> {
        let mut sock = Socket::new()?;
        let uplink = find_uplink(&mut sock, node_ip)?;
        let vxlan = match mode {
            Mode::Native => None,
            Mode::Vxlan { vni, port } => {
                let index = ensure_vxlan(&mut sock, &uplink, node_ip, vni, port)?;
                // Decapsulated packets from other nodes may carry sources (a node address
                // SNATed for a NodePort) that the routing table reaches through the uplink: no
                // reverse-path filter here.
                let sysctl = Sysctl::new(proc_sys_net);
                for (key, value) in [("rp_filter", "0"), ("forwarding", "1")] {
                    if let Err(e) = sysctl.write(&format!("ipv4/conf/{VXLAN_IFNAME}/{key}"), value)
                    {
                        tracing::warn!(error = %e, "cannot set sysctl");
                    }
                }
                Some(index)
            }
        };
        Ok(Router {
            sock,
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
    pub fn apply(&mut self, remotes: &[RemoteNode]) -> Result<Applied, RouteError> {
        let mut out = Applied::default();
        let want: BTreeMap<Ipv4Net, Hop> =
            remotes.iter().map(|r| (r.pod_cidr, self.hop(r))).collect();
        let have = petrel_routes(&mut self.sock)?;
        if let Some(vx) = self.vxlan {
            // Neighbour and FDB entries before routes: a route never points at an unresolved
            // next hop.
            self.apply_vxlan_entries(vx, remotes, &mut out)?;
        }
        for (dst, hop) in &want {
            if have.get(dst).map(|(h, _)| h) == Some(hop) {
                continue;
            }
            match self.sock.route_add(&hop.route(*dst), true) {
                Ok(()) => out.added += 1,
                Err(e) => out.errors.push(route_error(dst, hop, &e)),
            }
        }
        for (dst, (_, msg)) in have {
            if want.contains_key(&dst) {
                continue;
            }
            match self.sock.route_del(msg) {
                Ok(true) => out.removed += 1,
                // Gone already (ESRCH): nothing to do.
                Ok(false) => {}
                Err(e) => out
                    .errors
                    .push(format!("removing route {dst}: {}", e.source)),
            }
        }
        Ok(out)
    }

    fn apply_vxlan_entries(
        &mut self,
        vx: u32,
        remotes: &[RemoteNode],
        out: &mut Applied,
    ) -> Result<(), RouteError> {
        let hops: BTreeSet<Ipv4Addr> = remotes.iter().map(|r| vtep_addr(r.pod_cidr)).collect();
        let macs: BTreeSet<[u8; 6]> = remotes.iter().map(|r| vtep_mac(r.node_ip)).collect();
        for r in remotes {
            let (hop, mac) = (vtep_addr(r.pod_cidr), vtep_mac(r.node_ip));
            if let Err(e) = self
                .sock
                .neigh_replace(neigh::neighbour_message(vx, hop, mac))
            {
                out.errors
                    .push(format!("neighbour {hop} for node {}: {}", r.name, e.source));
            }
            if let Err(e) = self
                .sock
                .neigh_replace(neigh::fdb_message(vx, mac, r.node_ip))
            {
                out.errors.push(format!(
                    "FDB entry to {} for node {}: {}",
                    r.node_ip, r.name, e.source
                ));
            }
        }
        // Entries of nodes that are gone. The device is petrel's alone, so everything on it that
        // is not wanted goes.
        let stale: Vec<NeighbourMessage> = self
            .sock
            .neigh_dump(vx)?
            .into_iter()
            .filter(|n| !keep_entry(n, &hops, &macs))
            .collect();
        for n in stale {
            if let Err(e) = self.sock.neigh_del(n) {
                out.errors
                    .push(format!("removing a stale VXLAN entry: {e}"));
            }
        }
        Ok(())
    }
}

/// Whether a neighbour or FDB entry of the VXLAN device belongs to a wanted node.
fn keep_entry(n: &NeighbourMessage, hops: &BTreeSet<Ipv4Addr>, macs: &BTreeSet<[u8; 6]>) -> bool {
    match n.header.family {
        AddressFamily::Inet => neigh::destination_of(n).is_some_and(|a| hops.contains(&a)),
        AddressFamily::Bridge => neigh::mac_of(n).is_some_and(|m| macs.contains(&m)),
        _ => true,
    }
}

fn route_error(dst: &Ipv4Net, hop: &Hop, e: &NetlinkError) -> String {
    let hint = if hop.oif.is_none() && e.errno() == Some(libc::ENETUNREACH) {
        ": the node is not on a directly connected network; native routing needs every node on one L2 segment (use --routing vxlan)"
    } else {
        ""
    };
    format!("adding route {dst} via {}: {}{hint}", hop.gateway, e.source)
}

/// petrel's IPv4 routes in the main table, by destination.
fn petrel_routes(sock: &mut Socket) -> Result<BTreeMap<Ipv4Net, (Hop, RouteMessage)>, RouteError> {
    let mut out = BTreeMap::new();
    for m in sock.route_dump::<Ipv4Net>()? {
        let Some(r) = Route4::from_message(&m) else {
            continue;
        };
        if r.protocol != RouteProtocol::from(ROUTE_PROTOCOL) {
            continue;
        }
        // A native route's device is whatever the kernel picked: compare next hops only.
        let hop = Hop {
            gateway: r.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
            oif: if r.onlink { r.oif } else { None },
        };
        out.insert(r.dst, (hop, m));
    }
    Ok(out)
}

fn find_uplink(sock: &mut Socket, node_ip: Ipv4Addr) -> Result<Uplink, RouteError> {
    let index = sock
        .addr_link_of(node_ip)?
        .ok_or(RouteError::NoUplink(node_ip))?;
    // The link may go between the two requests: the address then has no interface either.
    let l = sock
        .link_get(LinkId::Index(index))?
        .ok_or(RouteError::NoUplink(node_ip))?;
    Ok(Uplink {
        index,
        name: link::name_of(&l).unwrap_or_default().to_string(),
        mtu: link::mtu_of(&l).unwrap_or(1500),
    })
}

fn ensure_vxlan(
    sock: &mut Socket,
    uplink: &Uplink,
    node_ip: Ipv4Addr,
    vni: u32,
    port: u16,
) -> Result<u32, RouteError> {
    let spec = VxlanSpec {
        name: VXLAN_IFNAME,
        vni,
        uplink: uplink.index,
        local: node_ip,
        port,
    };
    let index = match sock.link_get(LinkId::Name(VXLAN_IFNAME))? {
        Some(l) if spec.matches(&l) => l.header.index,
        existing => {
            if let Some(l) = existing {
                tracing::warn!(
                    device = VXLAN_IFNAME,
                    "VXLAN device has other parameters (node address, VNI, port or uplink changed): recreating it"
                );
                sock.link_delete(LinkId::Index(l.header.index))?;
            }
            sock.link_create_vxlan(&spec)?;
            sock.link_get(LinkId::Name(VXLAN_IFNAME))?
                .ok_or(RouteError::Vanished(VXLAN_IFNAME))?
                .header
                .index
        }
    };
    // MTU, MAC and state are set every time: cheap, and they follow the uplink's MTU.
    sock.link_set_mtu_mac(
        index,
        Some(uplink.mtu - VXLAN_OVERHEAD),
        Some(vtep_mac(node_ip)),
        true,
    )?;
    Ok(index)
}

/// Removes every petrel route and the VXLAN device (uninstall). Returns how many routes went.
pub fn remove_all() -> Result<usize, RouteError> {
    let mut sock = Socket::new()?;
    let mut n = 0;
    for (_, (_, msg)) in petrel_routes(&mut sock)? {
        if sock.route_del(msg)? {
            n += 1;
        }
    }
    sock.link_delete(LinkId::Name(VXLAN_IFNAME))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_petrels_and_onlink_only_on_the_overlay() {
        let dst: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let native = Hop {
            gateway: Ipv4Addr::new(192, 168, 0, 2),
            oif: None,
        }
        .route(dst);
        assert_eq!(native.protocol, RouteProtocol::from(ROUTE_PROTOCOL));
        assert!(!native.onlink);
        assert_eq!(native.oif, None);
        let overlay = Hop {
            gateway: dst.network(),
            oif: Some(7),
        }
        .route(dst);
        assert!(overlay.onlink);
        assert_eq!(overlay.oif, Some(7));
        assert_eq!(overlay.gateway, Some(dst.network()));
    }

    #[test]
    fn only_entries_of_wanted_nodes_are_kept() {
        let (hop, mac) = (Ipv4Addr::new(10, 244, 2, 0), [0x0e, 0x70, 192, 168, 0, 2]);
        let hops = BTreeSet::from([hop]);
        let macs = BTreeSet::from([mac]);
        let remote = Ipv4Addr::new(192, 168, 0, 2);
        assert!(keep_entry(
            &neigh::neighbour_message(4, hop, mac),
            &hops,
            &macs
        ));
        assert!(keep_entry(
            &neigh::fdb_message(4, mac, remote),
            &hops,
            &macs
        ));
        let gone = Ipv4Addr::new(10, 244, 3, 0);
        assert!(!keep_entry(
            &neigh::neighbour_message(4, gone, mac),
            &hops,
            &macs
        ));
        let other_mac = [0x0e, 0x70, 192, 168, 0, 3];
        assert!(!keep_entry(
            &neigh::fdb_message(4, other_mac, remote),
            &hops,
            &macs
        ));
    }
}
