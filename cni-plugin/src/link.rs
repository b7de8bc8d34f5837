//! Interface plumbing on petrel-netlink: the routed veth of one pod.
//!
//! A plugin call opens at most two netlink sockets, once each: one in the host's namespace (the
//! plugin's own) and one in the pod's, opened by a short thread that enters the namespace and
//! leaves (a socket stays in the namespace it was opened in).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};
use petrel_netlink::{
    LinkId, NetlinkError, Netns, Route4, Route6, Socket, Sysctl, VethSpec, addr,
    link::{format_mac, is_up, mac_of, name_of},
    packet::route::RouteScope,
    route,
};

pub use crate::contract::HOST_IF_PREFIX as HOST_PREFIX;
use crate::error::{CniError, Result};

/// The host-side interface name of (container, ifname): "pet" + 12 hex digits of a hash, so it is
/// unique per attachment, stable across retries, and 15 bytes long.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = petrel_common::fnv1a64(format!("{container_id}/{ifname}").as_bytes());
    format!("{HOST_PREFIX}{:012x}", h >> 16)
}

/// Failing to reach a namespace or to open a socket is an I/O error to the runtime (code 5), as
/// it always was; failures of netlink requests are code 102.
fn as_io(e: NetlinkError) -> CniError {
    CniError::io(format!("{} {}", e.op, e.object), e.source)
}

/// A netlink socket in the plugin's own (the host's) namespace.
pub fn host_socket() -> Result<Socket> {
    Socket::new().map_err(as_io)
}

/// The pod's namespace, open, with a netlink socket inside it.
pub struct PodNs {
    pub netns: Netns,
    pub sock: Socket,
}

impl PodNs {
    /// A socket inside `netns` (opened and checked by `crate::netns::open`).
    pub fn new(netns: Netns) -> Result<PodNs> {
        let sock = netns.socket().map_err(as_io)?;
        Ok(PodNs { netns, sock })
    }
}

fn vanished(what: &'static str, name: &str) -> CniError {
    CniError::Netlink(NetlinkError::new(
        what,
        name,
        io::Error::from_raw_os_error(libc::ENODEV),
    ))
}

/// What `setup` made.
#[derive(Debug, Clone)]
pub struct Wired {
    /// The host-side veth's interface index.
    pub host_index: u32,
    pub host_mac: String,
    pub container_mac: String,
}

pub struct Plan<'a> {
    pub ifname: &'a str,
    pub host_if: &'a str,
    /// The pod's IPv4 address and its gateway (the range's first address, on the host end).
    pub v4: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The pod's IPv6 address; its gateway is `ipam::GATEWAY6` on the host end.
    pub v6: Option<Ipv6Addr>,
    pub mtu: u32,
}

/// Why IPv6 cannot be used in the namespace whose /proc/sys is at `root`, or None: the kernel
/// has no IPv6 (`ipv6.disable=1`: no `net/ipv6`), or new interfaces (`default`) or all of them
/// get `disable_ipv6 = 1`. A new veth end takes `default`'s value.
pub fn ipv6_problem(root: &std::path::Path) -> io::Result<Option<String>> {
    if !root.join("net/ipv6").exists() {
        return Ok(Some(
            "the kernel has no IPv6 (booted with ipv6.disable=1?)".to_string(),
        ));
    }
    for which in ["all", "default"] {
        let key = format!("net/ipv6/conf/{which}/disable_ipv6");
        match std::fs::read_to_string(root.join(&key)) {
            Ok(v) if v.trim() != "0" => {
                return Ok(Some(format!(
                    "IPv6 is disabled (net.ipv6.conf.{which}.disable_ipv6 = {})",
                    v.trim()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Refuses an IPv6 range where IPv6 cannot be used, on the host (the plugin's namespace) or in
/// the pod's namespace, before anything is reserved or created (code 7: the config asks for
/// what the node does not have).
pub fn require_ipv6(pod: Option<&PodNs>, range: Ipv6Net) -> Result<()> {
    let root = std::path::Path::new("/proc/sys");
    let read = |e: io::Error| CniError::io("reading /proc/sys/net/ipv6", e);
    if let Some(why) = ipv6_problem(root).map_err(read)? {
        return Err(CniError::config(format!(
            "the pod range {range} is IPv6, but on the host {why}"
        )));
    }
    let Some(pod) = pod else { return Ok(()) };
    // /proc/sys/net shows the namespace of the thread that opens it.
    let in_pod = pod
        .netns
        .enter(|| {
            ipv6_problem(root).map_err(|e| NetlinkError::new("reading", "/proc/sys/net/ipv6", e))
        })
        .map_err(as_io)?;
    match in_pod {
        Some(why) => Err(CniError::config(format!(
            "the pod range {range} is IPv6, but in the pod's namespace {} {why}",
            pod.netns.path().display()
        ))),
        None => Ok(()),
    }
}

/// Fails when `ifname` already exists in the pod's namespace (before anything is created).
pub fn ensure_absent(pod: &mut PodNs, ifname: &str) -> Result<()> {
    if pod.sock.link_get(LinkId::Name(ifname))?.is_some() {
        return Err(CniError::InterfaceExists {
            ifname: ifname.to_string(),
            netns: pod.netns.path().display().to_string(),
        });
    }
    Ok(())
}

fn host_route(dst: Ipv4Addr, oif: u32) -> Route4 {
    Route4 {
        oif: Some(oif),
        scope: RouteScope::Link,
        ..Route4::new(Ipv4Net::from(dst))
    }
}

/// Creates the veth pair with the pod end born in its namespace, names it `ifname` there, and
/// sets addresses and routes on both sides. On error the caller rolls back by deleting the host
/// end (which removes the pair wherever its peer is).
pub fn setup(host: &mut Socket, pod: &mut PodNs, plan: &Plan) -> Result<Wired> {
    let host_if = plan.host_if;
    let peer_tmp = format!("tmp{}", &host_if[HOST_PREFIX.len()..]);
    let mtu = plan.mtu;
    let gateway6 = crate::ipam::GATEWAY6;

    // A leftover from an ADD killed half-way for the same attachment: start over.
    host.link_delete(LinkId::Name(host_if))?;
    host.link_delete(LinkId::Name(&peer_tmp))?;
    // The peer is created directly in the pod's namespace (as the reference plugins do): moving
    // an existing device between namespaces waits for an RCU grace period (about 30 ms here,
    // most of an ADD; see README "Performance").
    host.link_create_veth(&VethSpec {
        name: host_if,
        peer: &peer_tmp,
        mtu,
        peer_netns: Some(&pod.netns),
    })?;
    let link = host
        .link_get(LinkId::Name(host_if))?
        .ok_or_else(|| vanished("host veth vanished", host_if))?;
    let idx = link.header.index;
    host.link_set_up(idx)?;
    if let Some((addr, gateway)) = plan.v4 {
        host.addr_add(idx, gateway, 32, true)?;
        host.route_add(&host_route(addr, idx), true)?;
    }
    if let Some(addr6) = plan.v6 {
        // The pods' IPv6 gateway, usable at once (no DAD), and the route to the pod's /128.
        host.addr_add6(idx, gateway6, 64, true, true)?;
        host.route_add(
            &Route6 {
                oif: Some(idx),
                ..Route6::new(Ipv6Net::from(addr6))
            },
            true,
        )?;
    }
    let host_mac = mac_of(&link).map(format_mac).unwrap_or_default();

    let sysctl = Sysctl::new("/proc/sys");
    let write = |key: String| sysctl.write(&key, "1").map_err(as_io);
    if plan.v4.is_some() {
        write(format!("net/ipv4/conf/{host_if}/forwarding"))?;
        write("net/ipv4/ip_forward".to_string())?;
        // petrel's reverse NAT rewrites a reply's source to the service address before
        // routing; strict reverse-path filtering on the pod's veth would drop it.
        sysctl
            .write(&format!("net/ipv4/conf/{host_if}/rp_filter"), "0")
            .map_err(as_io)?;
    }
    if plan.v6.is_some() {
        // Only with an IPv6 range: on a host, IPv6 forwarding also stops accepting router
        // advertisements on interfaces with accept_ra 1 (see README "petrel-cni").
        write(format!("net/ipv6/conf/{host_if}/forwarding"))?;
        write("net/ipv6/conf/all/forwarding".to_string())?;
    }

    // Pod side: rename, up, address, routes via the gateway on the host end.
    let s = &mut pod.sock;
    let peer = s
        .link_get(LinkId::Name(&peer_tmp))?
        .ok_or_else(|| vanished("veth peer not in the pod namespace", &peer_tmp))?;
    let pidx = peer.header.index;
    s.link_set_name(pidx, plan.ifname)?;
    s.link_set_up(pidx)?;
    if let Some(lo) = s.link_get(LinkId::Name("lo"))? {
        s.link_set_up(lo.header.index)?;
    }
    if let Some((addr, gateway)) = plan.v4 {
        s.addr_add(pidx, addr, 32, false)?;
        s.route_add(&host_route(gateway, pidx), false)?;
        s.route_add(
            &Route4 {
                gateway: Some(gateway),
                oif: Some(pidx),
                ..Route4::new(Ipv4Net::default())
            },
            false,
        )?;
    }
    if let Some(addr6) = plan.v6 {
        // Without DAD: the pod's first connection does not wait a second for it.
        s.addr_add6(pidx, addr6, 128, false, true)?;
        s.route_add(
            &Route6 {
                gateway: Some(gateway6),
                oif: Some(pidx),
                ..Route6::new(Ipv6Net::default())
            },
            false,
        )?;
    }
    Ok(Wired {
        host_index: idx,
        host_mac,
        container_mac: mac_of(&peer).map(format_mac).unwrap_or_default(),
    })
}

/// What CHECK looks for in the pod's namespace: the interface up, with each family's address and
/// default route (`v4`: the address and its gateway; `v6`: the address, via `ipam::GATEWAY6`).
pub fn check(
    pod: &mut PodNs,
    ifname: &str,
    v4: Option<(Ipv4Addr, Ipv4Addr)>,
    v6: Option<Ipv6Addr>,
) -> Result<()> {
    let s = &mut pod.sock;
    let Some(link) = s.link_get(LinkId::Name(ifname))? else {
        return Err(CniError::CheckFailed(vec![format!(
            "interface {ifname} is missing"
        )]));
    };
    let mut problems = Vec::new();
    if !is_up(&link) {
        problems.push(format!("interface {ifname} is down"));
    }
    let addrs = s.addr_dump(Some(link.header.index))?;
    let has_addr = |ip: IpAddr| addrs.iter().any(|m| addr::addresses_of(m).any(|a| a == ip));
    if let Some((addr, gateway)) = v4 {
        if !has_addr(addr.into()) {
            problems.push(format!("address {addr} is missing on {ifname}"));
        }
        let has_default = s.route_dump::<Ipv4Net>()?.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && route::gateway_of::<Ipv4Net>(r) == Some(gateway)
        });
        if !has_default {
            problems.push(format!("default route via {gateway} is missing"));
        }
    }
    if let Some(addr6) = v6 {
        if !has_addr(addr6.into()) {
            problems.push(format!("address {addr6} is missing on {ifname}"));
        }
        let gateway6 = crate::ipam::GATEWAY6;
        let idx = link.header.index;
        let has_default = s
            .route_dump::<Ipv6Net>()?
            .iter()
            .filter_map(Route6::from_message)
            .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(gateway6) && r.oif == Some(idx));
        if !has_default {
            problems.push(format!(
                "IPv6 default route via {gateway6} dev {ifname} is missing"
            ));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(CniError::CheckFailed(problems)),
    }
}

/// Names of host-side interfaces petrel created.
pub fn host_links(host: &mut Socket) -> Result<Vec<String>> {
    Ok(host
        .link_dump()?
        .iter()
        .filter_map(name_of)
        .filter(|n| n.starts_with(HOST_PREFIX) && n.len() == 15)
        .map(str::to_string)
        .collect())
}

/// Deletes host-side interfaces by name (absent ones are fine).
pub fn delete_host_links(host: &mut Socket, names: &[String]) -> Result<()> {
    for n in names {
        host.link_delete(LinkId::Name(n))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_unique_and_fit() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(HOST_PREFIX));
    }

    #[test]
    fn ipv6_problems_are_read_from_the_sysctls() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(ipv6_problem(root).unwrap().unwrap().contains("no IPv6"));
        for which in ["all", "default"] {
            std::fs::create_dir_all(root.join(format!("net/ipv6/conf/{which}"))).unwrap();
            std::fs::write(
                root.join(format!("net/ipv6/conf/{which}/disable_ipv6")),
                "0\n",
            )
            .unwrap();
        }
        assert_eq!(ipv6_problem(root).unwrap(), None);
        std::fs::write(root.join("net/ipv6/conf/default/disable_ipv6"), "1\n").unwrap();
        assert_eq!(
            ipv6_problem(root).unwrap().as_deref(),
            Some("IPv6 is disabled (net.ipv6.conf.default.disable_ipv6 = 1)")
        );
    }

    #[test]
    fn host_names_did_not_change() {
        // The name the rtnetlink-era plugin gave ("abc", "eth0"): pods wired by an older
        // plugin must still be found (and deleted) by this one.
        assert_eq!(host_ifname("abc", "eth0"), "pet561a69de51a6");
    }
}
