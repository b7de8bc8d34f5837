//! The cluster the proxies are measured in: processes started in namespaces (`Proc`), the
//! simulated nodes with their backend and client pods, and the services in the API server.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, api::PostParams};
use petrel_testbed::{
    cluster::POD_PORT,
    cni,
    netns::{NetNs, veth},
    objects,
    pod::join_cgroup_on_exec,
    unique, workspace_bin,
};
use serde_json::{Value, json};

use super::{BACKENDS, CONCURRENCY, POD_CIDR, debug};

/// A process the benchmark started inside a namespace (through nsenter, which execs it, so the
/// PID is the program's); stopped by that PID on drop.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) stdout: Option<BufReader<ChildStdout>>,
    log: PathBuf,
}

impl Proc {
    pub(super) fn spawn(
        netns: &Path,
        cgroup: Option<&Path>,
        program: &Path,
        args: &[String],
    ) -> Proc {
        Self::spawn_with_path(netns, cgroup, program, args, None)
    }

    /// As `spawn`, with `bin` first on the program's PATH.
    pub(super) fn spawn_with_path(
        netns: &Path,
        cgroup: Option<&Path>,
        program: &Path,
        args: &[String],
        bin: Option<&Path>,
    ) -> Proc {
        let log = std::env::temp_dir().join(format!("{}.log", unique("petrel-bench-")));
        let err = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        if let Some(cg) = cgroup {
            join_cgroup_on_exec(&mut cmd, cg);
        }
        if let Some(bin) = bin {
            cmd.env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            );
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let stdout = child.stdout.take().map(BufReader::new);
        Proc { child, stdout, log }
    }

    /// The next line the process prints (None at its end).
    pub(super) fn line(&mut self) -> Option<String> {
        let mut s = String::new();
        match self.stdout.as_mut()?.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(s.trim_end().to_string()),
        }
    }

    pub(super) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits for the process to end; its whole stdout.
    pub(super) fn finish(mut self) -> (bool, String) {
        let mut out = String::new();
        if let Some(s) = self.stdout.as_mut() {
            let _ = s.read_to_string(&mut out);
        }
        let ok = self.child.wait().is_ok_and(|s| s.success());
        (ok, out)
    }

    fn stop(&mut self) {
        petrel_testbed::stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Peak resident memory (VmHWM) of process `pid`, in MiB.
pub(super) fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

pub(super) struct Backend {
    pub(super) name: String,
    pub(super) ip: Ipv4Addr,
    _server: Proc,
    _ns: NetNs,
}

/// A simulated node; fields drop in order, the node namespace last.
pub(super) struct Node {
    pub(super) backends: Vec<Backend>,
    pub(super) client: NetNs,
    /// Client pods for petrel's TC path, one per scale step (`tc_clients[i]` at the i-th
    /// scale). Not `client`: run from it right after the socket-LB runs, its connections would
    /// land on the backends' TIME_WAIT sockets of those runs with the same ports but TCP
    /// timestamps offset for another destination (the kernel offsets them per address pair,
    /// and the socket-LB runs' pair is the backend's, the TC runs' the VIP's), which the
    /// backends refuse (PAWS): a cost of mixing the two paths in one client at tens of
    /// thousands of connections a second, not of either path. One per scale because between
    /// scales the benchmark uninstalls petrel (`--cleanup`, its conntrack included) to time a
    /// full sync from nothing, while the backends keep the previous scale's TIME_WAIT sockets
    /// for 60 s: the same client through the next scale's (other) VIPs would meet them with
    /// nothing left to remap its ports (traced: every PAWS drop at the second scale was on a
    /// port in TIME_WAIT from the first). A real cluster restarts petrel with its pins adopted,
    /// conntrack kept, and kube-proxy's `--cleanup` leaves the kernel's conntrack as it is.
    pub(super) tc_clients: Vec<NetNs>,
    _ipam: tempfile::TempDir,
    pub(super) ns: NetNs,
}

pub(super) fn load_bin() -> PathBuf {
    workspace_bin("petrel-load", "PETREL_LOAD_BIN")
}

impl Node {
    /// Node `idx` (address 10.98.0.(10+idx)) on the control namespace's bridge, with BACKENDS
    /// backend pods serving on POD_PORT, a client pod and `scales` TC client pods, all wired by
    /// petrel-cni.
    pub(super) fn new(ctl: &NetNs, idx: u8, scales: usize) -> Node {
        let ns = NetNs::new(&unique("pbs"));
        let sw = format!("sw{idx}");
        veth(ctl, &sw, &ns, "eth0");
        ctl.exec("ip", &["link", "set", &sw, "master", "br0"]);
        let ip = Ipv4Addr::new(10, 98, 0, 10 + idx);
        ns.exec("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.sysctl("net.ipv4.ip_forward", "1");
        for conf in ["all", "default", "eth0"] {
            ns.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0");
        }
        // A VIP nothing has programmed yet is refused at once: the service range is local to
        // the node, whose stack answers a SYN to it with a reset. (An unreachable or prohibit
        // route would answer with ICMP, which the kernel rate-limits to one a second after a
        // burst of five: probes would see a second's retransmit instead of the moment the VIP
        // starts to answer.) Proxies translate before this routing decision.
        ns.exec(
            "ip",
            &[
                "route",
                "add",
                "local",
                "10.96.0.0/12",
                "dev",
                "lo",
                "table",
                "local",
            ],
        );
        let ipam = tempfile::tempdir().expect("tempdir");
        let conf = json!({
            "cniVersion": "1.1.0", "name": "bench", "type": "petrel-cni",
            "podCIDR": POD_CIDR, "dataDir": ipam.path(),
        })
        .to_string();
        let add = |id: &str| cni::add_pod(&ns, &conf, id, "pbp");
        let backends = (0..BACKENDS)
            .map(|i| {
                let name = format!("b{i}");
                let (pod, ip) = add(&name);
                let listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, POD_PORT).to_string();
                let mut server = Proc::spawn(
                    &pod.path(),
                    None,
                    &load_bin(),
                    &["serve".into(), name.clone(), listen],
                );
                assert_eq!(
                    server.line().as_deref(),
                    Some("listening"),
                    "backend {name}: {}",
                    server.log_tail()
                );
                Backend {
                    name,
                    ip,
                    _server: server,
                    _ns: pod,
                }
            })
            .collect();
        let client = |name: &str| {
            let (client, _) = add(name);
            // One client makes tens of thousands of connections a second: the whole port
            // range, and ports in TIME_WAIT reused (the servers close first, so few are).
            client.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
            client.sysctl("net.ipv4.tcp_tw_reuse", "1");
            client
        };
        Node {
            backends,
            client: client("client"),
            tc_clients: (0..scales)
                .map(|i| client(&format!("tcclient{i}")))
                .collect(),
            _ipam: ipam,
            ns,
        }
    }

    pub(super) fn backend_ips(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.ip).collect()
    }

    /// Starts a probe of `vip` from the client pod that ends when `expect` (or any backend)
    /// answers; returns once it has made its first attempt.
    pub(super) fn probe(
        &self,
        cgroup: Option<&Path>,
        vip: SocketAddrV4,
        expect: Option<&str>,
        timeout: u64,
    ) -> Proc {
        let mut args: Vec<String> = vec![
            "probe".into(),
            vip.to_string(),
            format!("--timeout={timeout}"),
        ];
        if let Some(e) = expect {
            args.push(format!("--expect={e}"));
        }
        if debug() {
            args.push("--verbose".into());
        }
        let mut p = Proc::spawn(&self.client.path(), cgroup, &load_bin(), &args);
        let first = p.line();
        assert_eq!(first.as_deref(), Some("ready"), "probe: {}", p.log_tail());
        p
    }

    /// Scrapes `/metrics` on 127.0.0.1:10249 inside the node (both proxies serve there).
    pub(super) fn metrics(&self) -> String {
        self.ns
            .run(|| {
                let mut s = TcpStream::connect("127.0.0.1:10249").ok()?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    .ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out)
            })
            .unwrap_or_default()
    }
}

/// Creates services `svc-<i>` for `i` in `range`, each with an EndpointSlice and a core
/// Endpoints object listing `backends`, spread over `clients` (each its own connection pool)
/// with `in_flight` services in flight; their ClusterIPs in order.
pub(super) async fn create_services(
    clients: &[kube::Client],
    range: std::ops::Range<usize>,
    backends: &[(Ipv4Addr, String)],
    in_flight: usize,
) -> Vec<Ipv4Addr> {
    let apis: Vec<(Api<Service>, Api<EndpointSlice>, Api<Endpoints>)> = clients
        .iter()
        .map(|c| {
            (
                Api::namespaced(c.clone(), "default"),
                Api::namespaced(c.clone(), "default"),
                Api::namespaced(c.clone(), "default"),
            )
        })
        .collect();
    let pp = PostParams::default();
    let (first, total) = (range.start, range.len());
    let started = std::time::Instant::now();
    futures::stream::iter(range)
        .map(|i| {
            let ((services, slices, eps), pp) = (&apis[i % apis.len()], &pp);
            async move {
                let name = format!("svc-{i}");
                let svc = services
                    .create(pp, &objects::service(&name, None))
                    .await
                    .unwrap_or_else(|e| panic!("create service {name}: {e}"));
                let slice_obj = objects::slice(&name, backends);
                let ep_obj = objects::endpoints(&name, backends);
                let (a, b) = futures::join!(slices.create(pp, &slice_obj), eps.create(pp, &ep_obj));
                a.unwrap_or_else(|e| panic!("create slice {name}: {e}"));
                b.unwrap_or_else(|e| panic!("create endpoints {name}: {e}"));
                objects::cluster_ip(&svc)
            }
        })
        .buffered(in_flight)
        .enumerate()
        .map(|(k, ip)| {
            if total >= 20_000 && (k + 1) % 10_000 == 0 {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "    {} services, {:.0} services/s",
                    first + k + 1,
                    (k + 1) as f64 / secs
                );
            }
            ip
        })
        .collect()
        .await
}

/// Runs petrel-load `mode` (conn or rr) from the client pod `client` against `addrs`.
pub(super) fn load(
    client: &NetNs,
    cgroup: Option<&Path>,
    mode: &str,
    addrs: &str,
    secs: f64,
) -> Value {
    let args: Vec<String> = vec![
        mode.into(),
        addrs.into(),
        format!("--secs={secs}"),
        format!("--concurrency={CONCURRENCY}"),
    ];
    let p = Proc::spawn(&client.path(), cgroup, &load_bin(), &args);
    let log = p.log_tail();
    let (ok, out) = p.finish();
    assert!(ok, "petrel-load {mode} {addrs} failed: {out} {log}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("petrel-load output {out:?}: {e}"))
}
