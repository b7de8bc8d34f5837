//! Interface plumbing with rtnetlink: the routed veth of one pod.
//!
//! Network namespaces belong to a thread, so every operation inside the pod's namespace runs on a
//! fresh thread that has entered it, with its own netlink socket and a single-threaded runtime.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteScope},
};
use nix::sched::{CloneFlags, setns};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{CniError, Result, code};

pub use crate::contract::HOST_IF_PREFIX as HOST_PREFIX;

/// The host-side interface name of (container, ifname): "pet" + 12 hex digits of a hash, so it is
/// unique per attachment, stable across retries, and 15 bytes long.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a 64: stable across releases (std's hasher is not).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{HOST_PREFIX}{:012x}", h >> 16)
}

fn nl_err(what: String) -> impl FnOnce(rtnetlink::Error) -> CniError {
    move |e| CniError::new(code::NETLINK, what, e.to_string())
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Runs `f` with a netlink handle in the namespace at `netns` (None: the caller's).
pub fn in_netns<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let netns: Option<PathBuf> = netns.map(Path::to_path_buf);
    std::thread::spawn(move || -> Result<T> {
        if let Some(path) = &netns {
            let f = File::open(path).map_err(|e| {
                CniError::io(format!("opening network namespace {}", path.display()), &e)
            })?;
            setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                CniError::io(
                    format!("entering network namespace {}", path.display()),
                    &std::io::Error::from(e),
                )
            })?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| CniError::io("starting netlink runtime", &e))?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection()
                .map_err(|e| CniError::io("opening netlink socket", &e))?;
            let conn = tokio::spawn(conn);
            let r = f(handle).await;
            conn.abort();
            r
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(CniError::new(
            code::NETLINK,
            "netlink worker thread panicked",
            "",
        ))
    })
}

pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => Some(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// Deletes a link by name; absent is fine.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool> {
    let Some(link) = link_by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl_err(format!("deleting link {name}"))(e)),
    }
}

/// What `setup` made.
#[derive(Debug, Clone)]
pub struct Wired {
    pub host_mac: String,
    pub container_mac: String,
}

pub struct Plan<'a> {
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub host_if: &'a str,
    pub addr: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Fails when `ifname` already exists in the pod's namespace (before anything is created).
pub fn ensure_absent(netns: &Path, ifname: &str) -> Result<()> {
    let name = ifname.to_string();
    let exists = in_netns(Some(netns), move |h| async move {
        Ok(link_by_name(&h, &name).await?.is_some())
    })?;
    if exists {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!("interface {ifname} already exists in {}", netns.display()),
            "",
        ));
    }
    Ok(())
}

/// Creates the veth pair, moves the pod end into its namespace as `ifname`, and sets addresses
/// and routes on both sides. On error the caller rolls back by deleting the host end (which
/// removes the pair wherever its peer is).
pub fn setup(plan: &Plan) -> Result<Wired> {
    let ns_file = File::open(plan.netns).map_err(|e| {
        CniError::io(
            format!("opening network namespace {}", plan.netns.display()),
            &e,
        )
    })?;
    let (host_if, peer_tmp) = (
        plan.host_if.to_string(),
        format!("tmp{}", &plan.host_if[HOST_PREFIX.len()..]),
    );
    let (mtu, gateway, addr) = (plan.mtu, plan.gateway, plan.addr);
    let ns_fd = ns_file.as_raw_fd();

    // Host side: create the pair, send the peer into the pod, address and route the host end.
    let host_mac = in_netns(None, {
        let (host_if, peer_tmp) = (host_if.clone(), peer_tmp.clone());
        move |h| async move {
            // A leftover from an ADD killed half-way for the same attachment: start over.
            delete_link(&h, &host_if).await?;
            delete_link(&h, &peer_tmp).await?;
            // The peer is created directly in the pod's namespace (as the reference plugins
            // do): moving an existing device between namespaces waits for an RCU grace period
            // (about 30 ms here, most of an ADD; see README "Performance").
            let peer = LinkUnspec::new_with_name(&peer_tmp)
                .mtu(mtu)
                .setns_by_fd(ns_fd)
                .build();
            h.link()
                .add(
                    LinkVeth::new(&host_if, &peer_tmp)
                        .mtu(mtu)
                        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!(
                    "creating veth {host_if} with its peer in the pod namespace"
                )))?;
            let host = link_by_name(&h, &host_if).await?.ok_or_else(|| {
                CniError::new(code::NETLINK, "host veth vanished", host_if.clone())
            })?;
            let idx = host.header.index;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(nl_err(format!("setting {host_if} up")))?;
            h.address()
                .add(idx, IpAddr::V4(gateway), 32)
                .replace()
                .execute()
                .await
                .map_err(nl_err(format!("adding gateway {gateway}/32 to {host_if}")))?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(addr, 32)
                        .output_interface(idx)
                        .scope(RouteScope::Link)
                        .build(),
                )
                .replace()
                .execute()
                .await
                .map_err(nl_err(format!("adding route {addr}/32 dev {host_if}")))?;
            Ok(mac_of(&host))
        }
    })?;
    set_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{host_if}/forwarding"),
        "1",
    )?;
    set_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    // petrel's reverse NAT rewrites a reply's source to the service address before routing;
    // strict reverse-path filtering on the pod's veth would drop it.
    set_sysctl(&format!("/proc/sys/net/ipv4/conf/{host_if}/rp_filter"), "0")?;

    // Pod side: rename, address, routes via the gateway on the host end.
    let ifname = plan.ifname.to_string();
    let container_mac = in_netns(Some(plan.netns), move |h| async move {
        let peer = link_by_name(&h, &peer_tmp).await?.ok_or_else(|| {
            CniError::new(
                code::NETLINK,
                "veth peer not in the pod namespace",
                peer_tmp.clone(),
            )
        })?;
        let idx = peer.header.index;
        h.link()
            .set(LinkUnspec::new_with_index(idx).name(ifname.clone()).build())
            .execute()
            .await
            .map_err(nl_err(format!("renaming {peer_tmp} to {ifname}")))?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("setting {ifname} up")))?;
        if let Some(lo) = link_by_name(&h, "lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await
                .map_err(nl_err("setting lo up".into()))?;
        }
        h.address()
            .add(idx, IpAddr::V4(addr), 32)
            .execute()
            .await
            .map_err(nl_err(format!("adding {addr}/32 to {ifname}")))?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(gateway, 32)
                    .output_interface(idx)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("adding route {gateway} dev {ifname}")))?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .output_interface(idx)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("adding default route via {gateway}")))?;
        Ok(mac_of(&peer))
    })?;
    drop(ns_file);
    Ok(Wired {
        host_mac,
        container_mac,
    })
}

fn set_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| CniError::io(format!("writing {path}"), &e))
}

/// What CHECK looks for in the pod's namespace.
pub fn check(netns: &Path, ifname: &str, addr: Ipv4Addr, gateway: Ipv4Addr) -> Result<()> {
    let ifname = ifname.to_string();
    let fail = |msg: String| CniError::new(code::CHECK_FAILED, msg, "");
    let problems = in_netns(Some(netns), move |h| async move {
        let mut problems = Vec::new();
        let Some(link) = link_by_name(&h, &ifname).await? else {
            return Ok(vec![format!("interface {ifname} is missing")]);
        };
        if !link.header.flags.contains(LinkFlags::Up) {
            problems.push(format!("interface {ifname} is down"));
        }
        let idx = link.header.index;
        let mut addrs = h.address().get().set_link_index_filter(idx).execute();
        let mut has_addr = false;
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(nl_err("listing addresses".into()))?
        {
            has_addr |= a
                .attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) if *v == addr));
        }
        if !has_addr {
            problems.push(format!("address {addr} is missing on {ifname}"));
        }
        let mut routes = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut has_default = false;
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(nl_err("listing routes".into()))?
        {
            let via_gw = r.attributes.iter().any(
                |x| matches!(x, RouteAttribute::Gateway(RouteAddress::Inet(g)) if *g == gateway),
            );
            has_default |= r.header.destination_prefix_length == 0 && via_gw;
        }
        if !has_default {
            problems.push(format!("default route via {gateway} is missing"));
        }
        Ok(problems)
    })?;
    match problems.is_empty() {
        true => Ok(()),
        false => Err(fail(problems.join("; "))),
    }
}

/// Names of host-side interfaces petrel created (for GC).
pub fn host_links() -> Result<Vec<String>> {
    in_netns(None, |h| async move {
        let mut out = Vec::new();
        let mut links = h.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(nl_err("listing links".into()))?
        {
            for a in &l.attributes {
                if let LinkAttribute::IfName(n) = a {
                    if n.starts_with(HOST_PREFIX) && n.len() == 15 {
                        out.push(n.clone());
                    }
                }
            }
        }
        Ok(out)
    })
}

/// Deletes host-side interfaces by name (absent ones are fine).
pub fn delete_host_links(names: Vec<String>) -> Result<()> {
    in_netns(None, move |h| async move {
        for n in &names {
            delete_link(&h, n).await?;
        }
        Ok(())
    })
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
}
