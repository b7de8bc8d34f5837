//! The verbs. Each validates everything first, then acts; ADD rolls back every step it took
//! when a later one fails (`AddTxn`).

use std::{
    collections::HashMap,
    ffi::OsString,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use crate::{
    config::{self, NetConf},
    env::{self, Attachment, Command, Verb},
    error::{CniError, Result},
    ipam::{self, Store},
    link::{self, PodNs},
    netns,
    result::{CniResult, Interface, IpConfig, Route},
};

/// Test-only (cargo feature `test-hooks`): `PETREL_CNI_TEST_PAUSE_AT=<step>` makes ADD sleep at
/// that step so a test can SIGKILL it there. Steps: `locked`, `reserved`, `wired`.
#[cfg(feature = "test-hooks")]
const PAUSE_ENV: &str = "PETREL_CNI_TEST_PAUSE_AT";

/// Runs one plugin invocation and returns the process exit code.
pub fn run(env: &HashMap<String, String>, stdin: &[u8], stdout: &mut dyn Write) -> i32 {
    answer(dispatch(env, stdin), stdin, stdout)
}

/// `run` on the process environment as the OS gives it (`std::env::vars_os`): a `CNI_*` value
/// that is not UTF-8 is answered with code 4, other such variables are ignored.
pub fn run_os(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    stdin: &[u8],
    stdout: &mut dyn Write,
) -> i32 {
    match env::from_os(vars) {
        Ok(env) => run(&env, stdin, stdout),
        Err(e) => answer(Err(e), stdin, stdout),
    }
}

fn answer(r: Result<Option<String>>, stdin: &[u8], stdout: &mut dyn Write) -> i32 {
    match r {
        Ok(Some(out)) => {
            let _ = writeln!(stdout, "{out}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            eprintln!("petrel-cni: error {}: {}", e.code(), e.full());
            let _ = writeln!(stdout, "{}", e.to_json(&config::version_hint(stdin)));
            1
        }
    }
}

fn log(conf: &NetConf, msg: &str) {
    eprintln!("petrel-cni: {msg}");
    if let Some(path) = &conf.log_file {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{msg}");
        }
    }
}

#[cfg(feature = "test-hooks")]
fn pause_at(env: &HashMap<String, String>, step: &str) {
    if env.get(PAUSE_ENV).is_some_and(|s| s == step) {
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
}

#[cfg(not(feature = "test-hooks"))]
fn pause_at(_env: &HashMap<String, String>, _step: &str) {}

/// What ADD has done so far: dropped without `commit()`, it undoes it (the host veth, which
/// takes its peer with it, then the reservation), logging what it could not undo. The shape of
/// the reference ptp plugin's deferred `ipam.ExecDel` on error.
struct AddTxn<'a> {
    conf: &'a NetConf,
    store: &'a Store,
    host: petrel_netlink::Socket,
    ips: Vec<IpAddr>,
    host_if: String,
    committed: bool,
}

impl AddTxn<'_> {
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for AddTxn<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let host_if = std::slice::from_ref(&self.host_if);
        if let Err(e) = link::delete_host_links(&mut self.host, host_if) {
            log(
                self.conf,
                &format!("rollback: deleting {}: {}", self.host_if, e.full()),
            );
        }
        if let Err(e) = crate::tcx::unpin(&self.conf.bpffs_root, &self.host_if) {
            log(
                self.conf,
                &format!("rollback: unpinning the links of {}: {e}", self.host_if),
            );
        }
        for ip in &self.ips {
            if let Err(e) = self.store.release_ip(*ip) {
                log(
                    self.conf,
                    &format!("rollback: releasing {ip}: {}", e.full()),
                );
            }
        }
    }
}

fn dispatch(env: &HashMap<String, String>, stdin: &[u8]) -> Result<Option<String>> {
    let cmd = Command::from_env(env)?;
    if cmd.verb == Verb::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    config::check_verb_version(cmd.verb, &conf.cni_version)?;
    match (cmd.verb, cmd.attachment) {
        (Verb::Add, Some(a)) => add(env, &conf, &a).map(Some),
        (Verb::Del, Some(a)) => del(&conf, &a).map(|()| None),
        (Verb::Check, Some(a)) => check(&conf, &a).map(|()| None),
        (Verb::Status, _) => status(&conf).map(|()| None),
        (Verb::Gc, _) => gc(&conf).map(|()| None),
        _ => Err(CniError::env(
            "command needs CNI_CONTAINERID and CNI_IFNAME",
        )),
    }
}

fn version(stdin: &[u8]) -> String {
    serde_json::json!({
        "cniVersion": config::version_hint(stdin),
        "supportedVersions": config::SUPPORTED_VERSIONS,
    })
    .to_string()
}

/// CNI_NETNS, open, once checked to be a network namespace other than the plugin's own.
fn pod_netns(a: &Attachment) -> Result<petrel_netlink::Netns> {
    let ns = a
        .netns
        .as_deref()
        .ok_or_else(|| CniError::env("CNI_NETNS is required"))?;
    netns::open(ns)
}

/// The earlier plugins' result: absent is fine, present but not a result is not (code 6).
pub fn prev_result(conf: &NetConf) -> Result<Option<CniResult>> {
    conf.prev_result
        .as_ref()
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| CniError::decode("prevResult is malformed", e))
        })
        .transpose()
}

/// One interface per pod: the pod's default route goes via the gateway on the first
/// interface's link, and a second /32 with a second default route cannot be wired the same
/// way. Refused before anything is reserved or created.
fn refuse_second_interface(store: &Store, a: &Attachment) -> Result<()> {
    let others: Vec<String> = store
        .reservations()?
        .into_iter()
        .filter(|(_, r)| r.container_id == a.container_id && r.ifname != a.ifname)
        .map(|(_, r)| r.ifname)
        .collect();
    match others.first() {
        None => Ok(()),
        Some(first) => Err(CniError::env(format!(
            "CNI_IFNAME {}: container {} already has interface {first} from petrel-cni, and \
             petrel-cni wires one interface per pod",
            a.ifname, a.container_id
        ))),
    }
}

fn add(env: &HashMap<String, String>, conf: &NetConf, a: &Attachment) -> Result<String> {
    // Validate everything before touching anything.
    let ns = pod_netns(a)?;
    let ranges = conf.require_pod_cidr()?;
    let prev = prev_result(conf)?;
    let mut pod = PodNs::new(ns)?;
    link::ensure_absent(&mut pod, &a.ifname)?;
    if let Some(v6) = ranges.v6() {
        link::require_ipv6(Some(&pod), v6)?;
    }
    let host = link::host_socket()?;

    let store = Store::open(&conf.data_dir, &conf.name)?;
    pause_at(env, "locked");
    refuse_second_interface(&store, a)?;
    let ips = store.reserve_all(ranges.all(), &a.container_id, &a.ifname)?;
    let host_if = link::host_ifname(&a.container_id, &a.ifname);
    let mut txn = AddTxn {
        conf,
        store: &store,
        host,
        ips: ips.clone(),
        host_if: host_if.clone(),
        committed: false,
    };
    pause_at(env, "reserved");
    let (v4, v6) = families(&ips);
    let gateway = ranges.v4().map(ipam::gateway);
    let plan = link::Plan {
        ifname: &a.ifname,
        host_if: &host_if,
        v4: v4.zip(gateway),
        v6,
        mtu: conf.mtu,
    };
    let wired = link::setup(&mut txn.host, &mut pod, &plan)?;
    wire_datapath(conf, &host_if, wired.host_index);
    pause_at(env, "wired");
    let listed: Vec<String> = ips.iter().map(ToString::to_string).collect();
    log(
        conf,
        &format!(
            "ADD {} {}: {} via {host_if}",
            a.container_id,
            a.ifname,
            listed.join(", ")
        ),
    );

    let mut result = prev.unwrap_or_default();
    let base = result.interfaces.len();
    result.interfaces.push(Interface {
        name: host_if,
        mac: wired.host_mac,
        mtu: Some(conf.mtu),
        sandbox: None,
    });
    result.interfaces.push(Interface {
        name: a.ifname.clone(),
        mac: wired.container_mac,
        mtu: Some(conf.mtu),
        sandbox: Some(pod.netns.path().display().to_string()),
    });
    // In the ranges' order: the runtime takes the first as the pod's primary IP.
    for ip in &ips {
        let (address, gateway, default) = match ip {
            IpAddr::V4(ip) => (
                format!("{ip}/32"),
                gateway.expect("an IPv4 range").to_string(),
                "0.0.0.0/0",
            ),
            IpAddr::V6(ip) => (format!("{ip}/128"), ipam::GATEWAY6.to_string(), "::/0"),
        };
        result.ips.push(IpConfig {
            version: None,
            address,
            gateway: Some(gateway.clone()),
            interface: Some(base + 1),
        });
        result.routes.push(Route {
            dst: default.into(),
            gw: Some(gateway),
        });
    }
    let result = result.in_version(&conf.cni_version);
    let out = serde_json::to_string(&result).expect("serialisable");
    txn.commit();
    Ok(out)
}

/// Attaches the agent's pinned pod programs to the new veth (`tcx`), so the pod's first packets
/// are served even while the agent is down. Never fails the ADD: the agent attaches whatever is
/// not attached when it sees the interface (or starts).
fn wire_datapath(conf: &NetConf, host_if: &str, ifindex: u32) {
    let root = &conf.bpffs_root;
    let msg = match crate::tcx::attach(root, host_if, ifindex) {
        Ok(crate::tcx::Outcome::Attached) => format!("{host_if}: datapath programs attached"),
        Ok(crate::tcx::Outcome::AlreadyWired) => return,
        Ok(crate::tcx::Outcome::NoPrograms) => format!(
            "{host_if}: no datapath programs pinned under {} (the agent has not started on this node): the agent attaches them when it starts",
            root.display()
        ),
        Err(e) => format!(
            "{host_if}: attaching the datapath programs failed ({e}): the agent attaches them when it sees the interface"
        ),
    };
    log(conf, &msg);
}

fn del(conf: &NetConf, a: &Attachment) -> Result<()> {
    let store = Store::open(&conf.data_dir, &conf.name)?;
    let host_if = link::host_ifname(&a.container_id, &a.ifname);
    // Deleting the host end removes the pod end too, wherever it is; gone already is fine.
    link::delete_host_links(&mut link::host_socket()?, std::slice::from_ref(&host_if))?;
    // Best effort, as the rest of DEL: the agent prunes pins of vanished interfaces too.
    if let Err(e) = crate::tcx::unpin(&conf.bpffs_root, &host_if) {
        log(conf, &format!("DEL: unpinning the links of {host_if}: {e}"));
    }
    let released = store.release(&a.container_id, &a.ifname)?;
    // As it has always been logged for one address ("Some(10.0.0.2)", "None").
    let released = match released.as_slice() {
        [] => "None".to_string(),
        [one] => format!("Some({one})"),
        all => {
            let all: Vec<String> = all.iter().map(ToString::to_string).collect();
            format!("Some({})", all.join(", "))
        }
    };
    log(
        conf,
        &format!("DEL {} {}: released {released}", a.container_id, a.ifname),
    );
    Ok(())
}

/// The IPv4 and the IPv6 address of a list (the first of each family).
fn families(ips: &[IpAddr]) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let v4 = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(ip) => Some(*ip),
        IpAddr::V6(_) => None,
    });
    let v6 = ips.iter().find_map(|ip| match ip {
        IpAddr::V6(ip) => Some(*ip),
        IpAddr::V4(_) => None,
    });
    (v4, v6)
}

/// prevResult's addresses, the first of each family.
fn prev_ips(conf: &NetConf) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let prev = prev_result(conf)?.ok_or_else(|| CniError::config("CHECK needs prevResult"))?;
    let ips: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter_map(|ip| ip.address.split('/').next()?.parse().ok())
        .collect();
    Ok(families(&ips))
}

fn check(conf: &NetConf, a: &Attachment) -> Result<()> {
    let ns = pod_netns(a)?;
    let (prev4, prev6) = prev_ips(conf)?;
    let ranges = conf.require_pod_cidr()?;
    // The families the config has must be in prevResult (an IPv4 config's message as before).
    let (want4, want6) = match (ranges.v4().is_some(), prev4, ranges.v6().is_some(), prev6) {
        (true, None, _, _) => return Err(CniError::config("prevResult has no IPv4 address")),
        (_, _, true, None) => return Err(CniError::config("prevResult has no IPv6 address")),
        (has4, p4, has6, p6) => (p4.filter(|_| has4), p6.filter(|_| has6)),
    };
    let store = Store::open(&conf.data_dir, &conf.name)?;
    let held = store.find_all(&a.container_id, &a.ifname)?;
    let (held4, held6) = families(&held);
    let mut problems = Vec::new();
    let mut compare = |want: Option<IpAddr>, got: Option<IpAddr>| match (want, got) {
        (Some(w), Some(g)) if w == g => {}
        (Some(w), Some(g)) => problems.push(format!("reservation is {g}, prevResult says {w}")),
        (Some(w), None) => problems.push(format!("no reservation for {w}")),
        (None, _) => {}
    };
    compare(want4.map(IpAddr::V4), held4.map(IpAddr::V4));
    compare(want6.map(IpAddr::V6), held6.map(IpAddr::V6));
    if !problems.is_empty() {
        return Err(CniError::CheckFailed(problems));
    }
    let mut pod = PodNs::new(ns)?;
    let gateway = ranges.v4().map(ipam::gateway);
    link::check(&mut pod, &a.ifname, want4.zip(gateway), want6)
}

fn status(conf: &NetConf) -> Result<()> {
    let unavailable = CniError::NotAvailable;
    let ranges = conf.require_pod_cidr().map_err(|e| unavailable(e.msg()))?;
    if let Some(v6) = ranges.v6() {
        link::require_ipv6(None, v6).map_err(|e| unavailable(e.msg()))?;
    }
    let store = Store::open(&conf.data_dir, &conf.name).map_err(|e| unavailable(e.full()))?;
    store
        .can_write_reservation()
        .map_err(|e| unavailable(e.full()))?;
    // An ADD needs an address of every family: one exhausted pool fails them all.
    let exhausted: Vec<IpNet> = ranges
        .all()
        .iter()
        .filter_map(|r| match store.has_free(*r) {
            Ok(true) => None,
            Ok(false) => Some(Ok(*r)),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    match exhausted.as_slice() {
        [] => Ok(()),
        [one] => Err(unavailable(format!("address pool {one} is exhausted"))),
        all => {
            let all: Vec<String> = all.iter().map(ToString::to_string).collect();
            Err(unavailable(format!(
                "address pools {} are exhausted",
                all.join(" and ")
            )))
        }
    }
}

fn gc(conf: &NetConf) -> Result<()> {
    // Without the list, every reservation would look unowned: refuse rather than free them all.
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::config("GC needs cni.dev/valid-attachments"))?;
    let store = Store::open(&conf.data_dir, &conf.name)?;
    let mut stale_links: Vec<String> = Vec::new();
    let mut freed = Vec::new();
    for (ip, r) in store.reservations()? {
        if valid
            .iter()
            .any(|v| v.container_id == r.container_id && v.ifname == r.ifname)
        {
            continue;
        }
        // Reservations are made before links, so every link of ours is named by a reservation.
        // A dual-stack attachment has two reservations and one link.
        let host_if = link::host_ifname(&r.container_id, &r.ifname);
        if !r.container_id.is_empty() && !stale_links.contains(&host_if) {
            stale_links.push(host_if);
        }
        freed.push((ip, r));
    }
    link::delete_host_links(&mut link::host_socket()?, &stale_links)?;
    for (ip, _) in &freed {
        store.release_ip(*ip)?;
    }
    log(conf, &format!("GC: freed {} reservation(s)", freed.len()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard releases the reservation unless committed. Its link deletion targets a name
    /// no one has (absent is fine; without CAP_NET_ADMIN it fails, is logged, and the release
    /// still happens).
    #[test]
    fn add_txn_rolls_back_unless_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = NetConf::parse(
            format!(
                r#"{{"cniVersion":"1.1.0","name":"t","podCIDRs":["10.9.0.0/29","fd00:9::/120"],"dataDir":"{}"}}"#,
                dir.path().display()
            )
            .as_bytes(),
        )
        .expect("conf");
        let ranges = conf.require_pod_cidr().expect("range");
        let store = Store::open(&conf.data_dir, &conf.name).expect("store");
        let txn = |id: &str| {
            let ips = store
                .reserve_all(ranges.all(), id, "eth0")
                .expect("reserve");
            AddTxn {
                conf: &conf,
                store: &store,
                host: link::host_socket().expect("netlink socket"),
                ips,
                host_if: link::host_ifname(&format!("petrel-unit-test-{id}"), "eth0"),
                committed: false,
            }
        };
        drop(txn("dropped"));
        assert!(store.find_all("dropped", "eth0").expect("find").is_empty());
        txn("committed").commit();
        assert_eq!(store.find_all("committed", "eth0").expect("find").len(), 2);
    }
}
