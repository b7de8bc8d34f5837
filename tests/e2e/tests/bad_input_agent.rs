//! Bad input to petrel-agent and netctl, the release binaries as users run them: each row an
//! input, the exit code and the log line or metric it must give, and what must still be there
//! afterwards (nothing deleted, nothing pinned, the good services still served).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use petrel_testbed::{
    agent::{Agent, eventually},
    netns::{NetNs, Node as SimNode, enter},
    pod, require_root, unique, workspace_bin,
};

/// A folder under /sys/fs/bpf this test made (pins of its own and planted "foreign" ones):
/// removed whole on drop, as the fixture owns all of it.
struct BpfDir(PathBuf);

impl BpfDir {
    fn new() -> BpfDir {
        let p = Path::new("/sys/fs/bpf").join(unique("petrel-bad-"));
        let _ = std::fs::remove_dir_all(&p);
        BpfDir(p)
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs mounted on a temporary folder, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new() -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "petrel-test",
                &dir.path().display().to_string(),
            ])
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).output();
    }
}

/// A BPF hash map pinned at `path` with key and value sizes of 4 (no petrel map has them).
fn pin_map(path: &Path) {
    let out = Command::new("bpftool")
        .args(["map", "create", &path.display().to_string()])
        .args([
            "type", "hash", "key", "4", "value", "4", "entries", "4", "name", "foreign",
        ])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool map create {}: {out:?}",
        path.display()
    );
}

/// Runs `petrel-agent ARGS` in `ns` to its end: (exit code, log).
fn run_agent(ns: &NetNs, args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    let mut agent = Agent::start(&ns.path(), &args);
    let code = agent.wait_exit(30);
    (code, agent.log())
}

/// A file's bytes, and every file and folder under `dir` with its contents.
fn tree(dir: &Path) -> BTreeSet<(PathBuf, Vec<u8>)> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("list") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.insert((p.clone(), Vec::new()));
            out.extend(tree(&p));
        } else {
            out.insert((p.clone(), std::fs::read(&p).unwrap_or_default()));
        }
    }
    out
}

/// Files laid out as petrel's pins would be, plus a user's own.
fn plant_files(root: &Path) {
    std::fs::create_dir_all(root.join("maps")).expect("mkdir");
    std::fs::create_dir_all(root.join("links")).expect("mkdir");
    std::fs::write(root.join("maps/SERVICES_V1"), b"user data").expect("write");
    std::fs::write(root.join("links/sock_connect4"), b"more").expect("write");
    std::fs::write(root.join("notes.txt"), b"keep me").expect("write");
}

#[test]
fn cleanup_refuses_what_is_not_petrels_and_removes_petrels_pins_by_name() {
    require_root();
    let ns = NetNs::new(&unique("bc"));

    // Row: an ordinary folder of files (the issue: it was wiped).
    let plain = tempfile::tempdir().expect("tempdir");
    plant_files(plain.path());
    let before = tree(plain.path());
    let root = plain.path().display().to_string();
    let (code, log) = run_agent(&ns, &["--cleanup", "--bpffs-root", &root]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is not on a bpffs mount"), "{log}");
    assert!(log.contains("nothing was removed"), "{log}");
    assert!(!log.contains("removed petrel's pins"), "{log}");
    assert_eq!(tree(plain.path()), before, "every file is still there");

    // Row: a tmpfs.
    let tmpfs = Tmpfs::new();
    plant_files(tmpfs.0.path());
    let before = tree(tmpfs.0.path());
    let root = tmpfs.0.path().display().to_string();
    let (code, log) = run_agent(&ns, &["--cleanup", "--bpffs-root", &root]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("filesystem magic 0x1021994"), "{log}");
    assert_eq!(tree(tmpfs.0.path()), before);

    // Row: a file, not a folder.
    let file = plain.path().join("notes.txt");
    let (code, log) = run_agent(
        &ns,
        &["--cleanup", "--bpffs-root", &file.display().to_string()],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("it is not a directory"), "{log}");
    assert_eq!(std::fs::read(&file).expect("kept"), b"keep me");

    // Row: bpffs holding a petrel-named pin, a foreign pin and another tool's folder.
    let bpf = BpfDir::new();
    std::fs::create_dir_all(bpf.0.join("maps")).expect("mkdir");
    std::fs::create_dir_all(bpf.0.join("links")).expect("mkdir");
    std::fs::create_dir_all(bpf.0.join("cilium")).expect("mkdir");
    pin_map(&bpf.0.join("maps/SERVICES_V1"));
    pin_map(&bpf.0.join("maps/OTHER_TOOL_MAP"));
    let root = bpf.0.display().to_string();
    let (code, log) = run_agent(&ns, &["--cleanup", "--bpffs-root", &root]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("holds what petrel did not create"), "{log}");
    assert!(
        log.contains("maps/OTHER_TOOL_MAP") && log.contains("cilium"),
        "{log}"
    );
    for kept in ["maps/SERVICES_V1", "maps/OTHER_TOOL_MAP", "cilium"] {
        assert!(bpf.0.join(kept).exists(), "{kept} was removed");
    }

    // Row: the bpffs mount itself (a typo'd --bpffs-root): other tools' pins are there.
    let (code, log) = run_agent(&ns, &["--cleanup", "--bpffs-root", "/sys/fs/bpf"]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("holds what petrel did not create"), "{log}");
    assert!(bpf.0.join("maps/OTHER_TOOL_MAP").exists());

    // Row: netctl on a pin of petrel's name but another shape.
    let out = Command::new(workspace_bin("netctl", "PETREL_NETCTL_BIN"))
        .args(["--bpffs-root", &root, "dump-services"])
        .output()
        .expect("netctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "map SERVICES_V1 has key size 4, expected 12: pinned by another petrel version?"
        ),
        "{err}"
    );
    assert!(!err.contains("is petrel running"), "{err}");

    // Row: only petrel's layout left: its pins go by name, then the empty folders.
    std::fs::remove_file(bpf.0.join("maps/OTHER_TOOL_MAP")).expect("unpin");
    std::fs::remove_dir(bpf.0.join("cilium")).expect("rmdir");
    let (code, log) = run_agent(&ns, &["--cleanup", "--bpffs-root", &root]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("removed petrel's pins by name"), "{log}");
    assert!(log.contains("maps/SERVICES_V1"), "{log}");
    assert!(!bpf.0.exists(), "the emptied root is removed");

    // Row: nothing there: nothing to do.
    let (code, log) = run_agent(&ns, &["--cleanup", "--bpffs-root", &root]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("removed petrel's pins by name"), "{log}");
    assert!(!log.contains("SERVICES_V1"), "{log}");
}

#[test]
fn out_of_range_settings_stop_the_agent_before_anything_is_pinned() {
    require_root();
    let ns = NetNs::new(&unique("bf"));
    let work = tempfile::tempdir().expect("tempdir");
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    let config = work.path().join("config.yaml");
    std::fs::write(&config, "sync-period: 0s\n").expect("write");
    let config = config.display().to_string();
    let rows: [(&[&str], &str); 9] = [
        (
            &["--sync-period", "0s"],
            "--sync-period 0s is out of range: between 1s and 3600s",
        ),
        (
            &["--sync-period", "99999999999h"],
            "--sync-period 359999999996400s is out of range",
        ),
        (
            &["--min-sync-period", "1h", "--sync-period", "30s"],
            "--min-sync-period 3600s is out of range",
        ),
        (
            &["--ct-gc-interval", "0s"],
            "--ct-gc-interval 0s is out of range",
        ),
        (
            &["--ct-max-flows", "4294967295"],
            "--ct-max-flows 4294967295 is out of range",
        ),
        (
            &["--maglev-size", "16383"],
            "--maglev-size 16383 is not prime",
        ),
        (
            &["--pod-mtu", "100"],
            "--pod-mtu 100 is out of range: between 576 and 65535",
        ),
        (
            &["--vxlan-vni", "16777216"],
            "--vxlan-vni 16777216 is out of range",
        ),
        (&["--config", &config], "--sync-period 0s is out of range"),
    ];
    for (flags, want) in rows {
        let pins = BpfDir::new();
        let state = work.path().join("state");
        let mut args = vec![
            "--manifests".to_string(),
            manifests.display().to_string(),
            "--node-name".into(),
            "n1".into(),
            "--bpffs-root".into(),
            pins.0.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--pod-cidr-file".into(),
            state.join("pod-cidr").display().to_string(),
            "--cni-conf-file".into(),
            String::new(),
            "--socket-lb".into(),
            "false".into(),
        ];
        args.extend(flags.iter().map(ToString::to_string));
        let mut agent = Agent::start(&ns.path(), &args);
        let code = agent.wait_exit(30);
        let log = agent.log();
        assert_eq!(code, Some(1), "{flags:?}: {log}");
        assert!(log.contains(want), "{flags:?}: want {want:?} in {log}");
        assert!(!pins.0.exists(), "{flags:?}: something was pinned");
        assert!(!state.exists(), "{flags:?}: something was written");
    }
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const B0: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);

fn service(name: &str, vip: &str, created: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"{created}\"}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n{extra}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{B0}], nodeName: n1, conditions: {{ready: true}}}}]\nports: [{{name: http, port: 8080, protocol: TCP}}]\n"
    )
}

fn node_manifest(cidr: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{podCIDR: {cidr}}}\n")
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// GET `path` on 127.0.0.1:`port` inside `ns`.
fn http(ns: &NetNs, port: u16, path: &str) -> String {
    let (ns, path) = (ns.path(), path.to_string());
    std::thread::spawn(move || {
        enter(&ns);
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .join()
    .expect("http thread")
}

fn netctl(pins: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(workspace_bin("netctl", "PETREL_NETCTL_BIN"))
        .arg("--bpffs-root")
        .arg(pins)
        .args(["dump-services", "-o", "json"])
        .output()
        .expect("netctl");
    assert!(
        out.status.success(),
        "netctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// (address, port) of every programmed frontend.
fn frontends(pins: &Path) -> BTreeSet<(String, u64)> {
    netctl(pins)
        .iter()
        .map(|s| {
            let fe = &s["frontend"];
            (
                fe["addr"].as_str().unwrap_or_default().to_string(),
                fe["port"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn bad_manifests_are_refused_alone_and_never_stop_the_agent() {
    require_root();
    let pins = petrel_testbed::BpffsRoot::new(&unique("petrel-badm-"));
    let mut node = SimNode::new(&unique("bm"));
    node.add_pod(&unique("bmc"), CLIENT);
    let backend = node.add_pod(&unique("bmb"), B0);
    let _server = pod::Server::start(Some(backend.ns.path()), "b0", SocketAddrV4::new(B0, 8080));
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("m");
    std::fs::create_dir(&dir).expect("mkdir");

    // The good service, the oldest.
    write_atomic(
        &dir.join("web.yaml"),
        &service("web", "10.96.0.50", "2020-01-01T00:00:00Z", ""),
    );
    // Rows that must be skipped without blocking or reading unbounded.
    let fifo = std::ffi::CString::new(format!("{}/fifo.yaml", dir.display())).expect("c");
    // SAFETY: a valid C string; mkfifo has no other precondition.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).expect("symlink");
    std::fs::create_dir(dir.join("dir.yaml")).expect("mkdir");
    std::fs::File::create(dir.join("big.yaml"))
        .expect("create")
        .set_len(5 * 1024 * 1024)
        .expect("sparse");
    // Rows that must be refused, object by object.
    std::fs::write(
        dir.join("ports.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: wrap}\nspec: {clusterIP: 10.96.0.51, ports: [{port: 70000}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec: {type: NodePort, clusterIP: 10.96.0.53, ports: [{port: 80, nodePort: 99999}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {namespace: default}\nspec: {clusterIP: 10.96.0.54, ports: [{port: 80}]}\n",
    )
    .expect("write");
    // Sorted first, but created later: refused, and web keeps 10.96.0.50:80.
    write_atomic(
        &dir.join("0-clash.yaml"),
        &service("clash", "10.96.0.50", "2021-01-01T00:00:00Z", ""),
    );
    // A podCIDR petrel-cni cannot use.
    write_atomic(&dir.join("node.yaml"), &node_manifest("10.244.5.0/31"));

    let state = tempfile::tempdir().expect("tempdir");
    let pod_cidr = state.path().join("pod-cidr");
    let args: Vec<String> = [
        "--manifests",
        &dir.display().to_string(),
        "--node-name",
        "n1",
        "--bpffs-root",
        &pins.path().display().to_string(),
        "--socket-lb",
        "false",
        "--pod-interface-prefix",
        "h-",
        "--min-sync-period",
        "20ms",
        "--state-dir",
        &state.path().display().to_string(),
        "--pod-cidr-file",
        &pod_cidr.display().to_string(),
        // "" leaves CNI configuration alone, and is accepted.
        "--cni-conf-file",
        "",
    ]
    .map(String::from)
    .to_vec();
    let agent = Agent::start(&node.ns.path(), &args);
    let client = node.pods[0].ns.path();
    let get = move |to: SocketAddrV4| {
        let ns = client.clone();
        std::thread::spawn(move || {
            enter(&ns);
            pod::tcp_get(to)
        })
        .join()
        .expect("client thread")
    };
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 50), 80);
    eventually("the good service answers", 30, || get(vip).is_ok());
    assert_eq!(get(vip).expect("reply").server, "b0");
    let health = http(&node.ns, 10256, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http(&node.ns, 10249, "/metrics");
    for want in [
        "petrel_manifest_errors 4",
        "petrel_manifest_refused{reason=\"invalid\"} 3",
        "petrel_manifest_refused{reason=\"duplicate_port\"} 1",
        "petrel_manifest_source_ok 1",
        "petrel_pod_cidr_refused 1",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    // Nothing wrapped to 16 bits (70000 -> 4464, 99999 -> 34463), nothing from a refused object.
    let want_frontends = BTreeSet::from([("10.96.0.50".to_string(), 80)]);
    assert_eq!(frontends(pins.path()), want_frontends);
    assert_eq!(
        netctl(pins.path())[0]["backends"].as_array().map(Vec::len),
        Some(1)
    );
    let log = agent.log();
    for want in [
        "not a regular file (a FIFO)",
        "not a regular file (a character device)",
        "not a regular file (a directory)",
        "over the limit of 4194304 bytes per manifest file",
        "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.ports[0].nodePort: Invalid value: 99999",
        "metadata.name: Required value",
        "10.96.0.50:80/TCP belongs to Service default/web",
        "the Node's podCIDR is refused",
    ] {
        assert!(log.contains(want), "{want:?} in the log:\n{log}");
    }
    assert!(!pod_cidr.exists(), "a /31 was written for petrel-cni");

    // A change elsewhere: the refusals are not logged again, the new service is served.
    write_atomic(
        &dir.join("web2.yaml"),
        &service("web2", "10.96.0.52", "2020-06-01T00:00:00Z", ""),
    );
    write_atomic(&dir.join("node.yaml"), &node_manifest("10.244.5.0/24"));
    let vip2 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 52), 80);
    eventually("the second service answers", 20, || get(vip2).is_ok());
    eventually("the usable podCIDR is written", 10, || {
        std::fs::read_to_string(&pod_cidr).is_ok_and(|c| c == "10.244.5.0/24\n")
    });
    let log = agent.log();
    assert!(log.matches("manifests read").count() >= 2, "{log}");
    for once in [
        "fifo.yaml",
        "Invalid value: 70000",
        "belongs to Service default/web",
    ] {
        assert_eq!(
            log.matches(once).count(),
            1,
            "{once:?} logged once per change:\n{log}"
        );
    }
    assert!(http(&node.ns, 10249, "/metrics").contains("petrel_pod_cidr_refused 0"));

    // The folder vanishes: the last good state stays, and says so.
    std::fs::rename(&dir, work.path().join("gone")).expect("rename");
    eventually("the source reports the folder unreadable", 10, || {
        http(&node.ns, 10249, "/metrics").contains("petrel_manifest_source_ok 0")
    });
    let both = BTreeSet::from([
        ("10.96.0.50".to_string(), 80),
        ("10.96.0.52".to_string(), 80),
    ]);
    // Beyond a few polls of the source and a full sync period of the agent.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(frontends(pins.path()), both);
    assert!(get(vip).is_ok() && get(vip2).is_ok());
    assert!(
        agent
            .log()
            .contains("manifests folder cannot be read: keeping the last good state"),
        "{}",
        agent.log()
    );
    let health = http(&node.ns, 10256, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    std::fs::rename(work.path().join("gone"), &dir).expect("rename back");
    eventually("the source is back", 10, || {
        http(&node.ns, 10249, "/metrics").contains("petrel_manifest_source_ok 1")
    });
    assert_eq!(frontends(pins.path()), both);
}
