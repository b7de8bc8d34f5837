//! petrel-cni against hostile or careless input (issue 17), through the real binary as a runtime
//! calls it: every row gets its CNI error code and a message naming what is wrong, and leaves
//! nothing behind (no link, no address or route, no file in the store, no temporary file,
//! nothing in the working directory). Each test runs the plugin inside its own "node"
//! namespace and store, removed on drop even when the test fails.

use std::{
    ffi::OsString,
    io::{Read as _, Write as _},
    os::unix::ffi::OsStringExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use petrel_testbed::{
    cni::{Call, Outcome, petrel_links, plugin_bin, reservations},
    netns::NetNs,
    require_root, unique,
};
use serde_json::{Value, json};

/// Not a latency bound: a call that has not answered by then is hung (a FIFO read, a lock).
const HUNG: Duration = Duration::from_secs(60);

struct Env {
    node: NetNs,
    pod: NetNs,
    data: tempfile::TempDir,
    /// Files the rows point at: pod CIDR files, a FIFO, a plain file.
    files: tempfile::TempDir,
    cidr: String,
}

/// What a call may not change: the node's links, addresses and routes, the pod's links, every
/// file of the store (names, types, contents), and the working directory's entries.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    node: Vec<String>,
    pod: Vec<String>,
    store: Vec<String>,
    cwd: Vec<String>,
}

fn lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(path);
            } else if ft.is_file() {
                let data = std::fs::read(&path).unwrap_or_default();
                out.push(format!("{rel} = {}", String::from_utf8_lossy(&data)));
            } else {
                out.push(format!("{rel} ({ft:?})"));
            }
        }
    }
    out.sort();
    out
}

impl Env {
    fn new(cidr: &str) -> Env {
        require_root();
        let env = Env {
            node: NetNs::new(&unique("bn")),
            pod: NetNs::new(&unique("bp")),
            data: tempfile::tempdir().expect("tempdir"),
            files: tempfile::tempdir().expect("tempdir"),
            cidr: cidr.into(),
        };
        // The store exists before the rows run (as on a node that has run pods), so a row that
        // creates anything in it shows up.
        env.call("STATUS", "", "", None, &env.conf("1.1.0")).ok();
        env
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "petrel",
            "type": "petrel-cni",
            "podCIDR": self.cidr,
            "dataDir": self.data.path(),
        })
    }

    /// The config with `key` set to `value` (`Value::Null` removes it).
    fn conf_with(&self, version: &str, key: &str, value: Value) -> Value {
        let mut c = self.conf(version);
        match value {
            Value::Null => {
                c.as_object_mut().expect("object").remove(key);
            }
            v => c[key] = v,
        }
        c
    }

    /// The config reading the pod range from `file` instead of `podCIDR`.
    fn conf_file(&self, version: &str, file: &Path) -> Value {
        let mut c = self.conf_with(version, "podCIDR", Value::Null);
        c["podCIDRFile"] = json!(file);
        c
    }

    fn call(
        &self,
        verb: &str,
        cid: &str,
        ifname: &str,
        netns: Option<PathBuf>,
        conf: &Value,
    ) -> Outcome {
        self.call_env(verb, cid, ifname, netns, &conf.to_string(), &[])
    }

    /// One call, with extra variables given as the OS takes them (so they need not be UTF-8);
    /// fails the test instead of hanging when the plugin does not answer.
    fn call_env(
        &self,
        verb: &str,
        cid: &str,
        ifname: &str,
        netns: Option<PathBuf>,
        stdin: &str,
        os_env: &[(OsString, OsString)],
    ) -> Outcome {
        let call = Call {
            plugin: plugin_bin(),
            command: verb,
            container_id: cid,
            ifname,
            netns,
            extra_env: Vec::new(),
        };
        let mut cmd = call.command(&self.node);
        for (k, v) in os_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let deadline = Instant::now() + HUNG;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait plugin") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{verb} hung for {HUNG:?} (stdin {stdin})");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let _ = child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout);
        let _ = child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr);
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: stdout.trim().to_string(),
            stderr,
        }
    }

    fn add(&self, cid: &str, ifname: &str) -> Outcome {
        self.call(
            "ADD",
            cid,
            ifname,
            Some(self.pod.path()),
            &self.conf("1.1.0"),
        )
    }

    fn del(&self, cid: &str, ifname: &str, conf: &Value) -> Outcome {
        self.call("DEL", cid, ifname, Some(self.pod.path()), conf)
    }

    fn gc(&self, conf: &Value, valid: &[&str]) -> Outcome {
        let mut conf = conf.clone();
        conf["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|c| json!({"containerID": c, "ifname": "eth0"}))
            .collect();
        self.call("GC", "", "", None, &conf)
    }

    fn snapshot(&self) -> Snapshot {
        let ip = |ns: &NetNs, args: &[&str]| lines(&ns.exec("ip", args));
        let mut node = ip(&self.node, &["-o", "link", "show"]);
        node.extend(ip(&self.node, &["-o", "addr", "show"]));
        node.extend(ip(&self.node, &["route", "show", "table", "all"]));
        let mut cwd: Vec<String> = std::fs::read_dir(".")
            .expect("cwd")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        cwd.sort();
        Snapshot {
            node,
            pod: ip(&self.pod, &["-o", "link", "show"]),
            store: tree(self.data.path()),
            cwd,
        }
    }

    /// Reservations petrel wrote: regular files named like an IP holding a containerID (the
    /// testbed's `reservations` counts every entry named like an IP, strays included).
    fn reservations(&self) -> Vec<String> {
        let store = self.data.path().join("petrel");
        reservations(self.data.path(), "petrel")
            .into_iter()
            .filter(|ip| {
                std::fs::symlink_metadata(store.join(ip)).is_ok_and(|m| m.is_file())
                    && std::fs::read(store.join(ip))
                        .ok()
                        .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                        .is_some_and(|v| v["containerID"].is_string())
            })
            .collect()
    }

    fn assert_clean(&self) {
        assert_eq!(
            self.reservations(),
            Vec::<String>::new(),
            "reservations left"
        );
        assert_eq!(petrel_links(&self.node), Vec::<String>::new(), "links left");
        let tmp: Vec<String> = tree(self.data.path())
            .into_iter()
            .filter(|l| l.contains(".tmp-"))
            .collect();
        assert_eq!(tmp, Vec::<String>::new(), "temporary files left");
    }
}

/// The error object's message and details, for matching a fragment in either.
fn said(out: &Outcome, code: u64) -> String {
    let msg = out.error_code(code);
    let v = out.json();
    format!("{msg}: {}", v["details"].as_str().unwrap_or_default())
}

fn non_utf8() -> OsString {
    OsString::from_vec(vec![b'e', b't', b'h', 0xff])
}

struct Row {
    what: &'static str,
    verb: &'static str,
    cid: &'static str,
    ifname: String,
    netns: Option<PathBuf>,
    stdin: String,
    os_env: Vec<(OsString, OsString)>,
    code: u64,
    says: String,
}

#[test]
fn bad_input_table() {
    let env = Env::new("10.251.0.0/24");
    let f = env.files.path();
    let fifo = f.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let plain = f.join("plain");
    std::fs::write(&plain, b"not a namespace").expect("write");
    let cidr_file = |name: &str, contents: &str| {
        let p = f.join(name);
        std::fs::write(&p, contents).expect("write");
        p
    };
    let empty = cidr_file("empty", "");
    let two_v4 = cidr_file("two-v4", "10.1.0.0/24\n10.2.0.0/24\n");
    let narrow_v6 = cidr_file("narrow-v6", "10.1.0.0/24\nfd00::/121\n");
    let everything = cidr_file("everything", "0.0.0.0/0\n");
    let garbage = cidr_file("garbage", "banana\n");
    let zero = f.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");

    let pod = || Some(env.pod.path());
    let good = env.conf("1.1.0");
    let own = env.node.path();
    let bad_prev = {
        let mut c = good.clone();
        c["prevResult"] = json!({"cniVersion": "1.1.0", "ips": "not a list"});
        c
    };
    let row =
        |what, verb, ifname: &str, netns: Option<PathBuf>, stdin: &Value, code, says: &str| Row {
            what,
            verb,
            cid: "bad",
            ifname: ifname.to_string(),
            netns,
            stdin: stdin.to_string(),
            os_env: Vec::new(),
            code,
            says: says.to_string(),
        };
    let os = |what, var: &str, code, says: &str| Row {
        os_env: vec![(var.into(), non_utf8())],
        ..row(what, "ADD", "eth0", pod(), &good, code, says)
    };
    let cidr = |c: &str, says: &str| {
        row(
            "podCIDR",
            "ADD",
            "eth0",
            pod(),
            &env.conf_with("1.1.0", "podCIDR", json!(c)),
            7,
            &format!("podCIDR {c} {says}"),
        )
    };
    let cidrs = |list: Value, says: &str| {
        let mut c = env.conf_with("1.1.0", "podCIDR", Value::Null);
        c["podCIDRs"] = list;
        row("podCIDRs", "ADD", "eth0", pod(), &c, 7, says)
    };
    let file = |verb, p: &Path, code, says: &str| {
        row(
            "podCIDRFile",
            verb,
            "eth0",
            pod(),
            &env.conf_file("1.1.0", p),
            code,
            &format!("pod CIDR file {}{says}", p.display()),
        )
    };
    let rows = vec![
        // The environment.
        os(
            "CNI_IFNAME not UTF-8",
            "CNI_IFNAME",
            4,
            "CNI_IFNAME is not valid UTF-8",
        ),
        os(
            "CNI_NETNS not UTF-8",
            "CNI_NETNS",
            4,
            "CNI_NETNS is not valid UTF-8",
        ),
        os(
            "CNI_CONTAINERID not UTF-8",
            "CNI_CONTAINERID",
            4,
            "CNI_CONTAINERID is not valid UTF-8",
        ),
        Row {
            verb: "DEL",
            ..os(
                "CNI_COMMAND not UTF-8",
                "CNI_COMMAND",
                4,
                "CNI_COMMAND is not valid UTF-8",
            )
        },
        row(
            "ifname template",
            "ADD",
            "eth%d",
            pod(),
            &good,
            4,
            r#"CNI_IFNAME "eth%d" is not a valid interface name"#,
        ),
        row(
            "ifname space",
            "ADD",
            "a b",
            pod(),
            &good,
            4,
            r#"CNI_IFNAME "a b" is not"#,
        ),
        row(
            "ifname colon",
            "ADD",
            "eth0:1",
            pod(),
            &good,
            4,
            r#"CNI_IFNAME "eth0:1" is not"#,
        ),
        row(
            "ifname slash",
            "ADD",
            "a/b",
            pod(),
            &good,
            4,
            r#"CNI_IFNAME "a/b" is not"#,
        ),
        row(
            "ifname dot",
            "ADD",
            ".",
            pod(),
            &good,
            4,
            r#"CNI_IFNAME "." is not"#,
        ),
        row(
            "ifname dotdot",
            "ADD",
            "..",
            pod(),
            &good,
            4,
            r#"CNI_IFNAME ".." is not"#,
        ),
        row(
            "ifname 16 bytes",
            "ADD",
            "0123456789abcdef",
            pod(),
            &good,
            4,
            "CNI_IFNAME \"0123456789abcdef\" is not",
        ),
        row(
            "ifname missing",
            "ADD",
            "",
            pod(),
            &good,
            4,
            "CNI_IFNAME is required",
        ),
        row(
            "ifname template, DEL",
            "DEL",
            "eth%d",
            pod(),
            &good,
            4,
            "CNI_IFNAME \"eth%d\"",
        ),
        // CNI_NETNS.
        row(
            "netns is the plugin's own",
            "ADD",
            "eth0",
            Some(own.clone()),
            &good,
            4,
            &format!(
                "CNI_NETNS {} is the plugin's own network namespace",
                own.display()
            ),
        ),
        row(
            "netns is the plugin's own, CHECK",
            "CHECK",
            "eth0",
            Some(own.clone()),
            &good,
            4,
            "is the plugin's own network namespace",
        ),
        row(
            "netns is a regular file",
            "ADD",
            "eth0",
            Some(plain.clone()),
            &good,
            4,
            &format!(
                "CNI_NETNS {} exists but is not a network namespace (a regular file",
                plain.display()
            ),
        ),
        row(
            "netns is a FIFO",
            "ADD",
            "eth0",
            Some(fifo.clone()),
            &good,
            4,
            "exists but is not a network namespace (a FIFO",
        ),
        row(
            "netns is a directory",
            "ADD",
            "eth0",
            Some(f.to_path_buf()),
            &good,
            4,
            "exists but is not a network namespace (a directory",
        ),
        row(
            "netns is a mount namespace",
            "ADD",
            "eth0",
            Some("/proc/self/ns/mnt".into()),
            &good,
            4,
            "exists but is not a network namespace (a mount namespace)",
        ),
        row(
            "netns does not exist",
            "ADD",
            "eth0",
            Some(f.join("nope")),
            &good,
            4,
            "does not exist",
        ),
        row(
            "netns missing",
            "ADD",
            "eth0",
            None,
            &good,
            4,
            "CNI_NETNS is required",
        ),
        // The configuration's shape.
        row(
            "config is an array",
            "ADD",
            "eth0",
            pod(),
            &json!([good.clone()]),
            6,
            "invalid network configuration JSON: the network configuration is an array, not a JSON object",
        ),
        row(
            "config is null",
            "ADD",
            "eth0",
            pod(),
            &Value::Null,
            6,
            "is null, not a JSON object",
        ),
        row(
            "config is a number",
            "DEL",
            "eth0",
            pod(),
            &json!(42),
            6,
            "is a number, not a JSON object",
        ),
        row(
            "prevResult malformed",
            "CHECK",
            "eth0",
            pod(),
            &bad_prev,
            6,
            "prevResult is malformed",
        ),
        row(
            "prevResult missing",
            "CHECK",
            "eth0",
            pod(),
            &good,
            7,
            "CHECK needs prevResult",
        ),
        // Verbs the config's version does not define.
        row(
            "CHECK in 0.3.1",
            "CHECK",
            "eth0",
            pod(),
            &env.conf("0.3.1"),
            1,
            "incompatible CNI version: config version 0.3.1 does not allow CHECK: CHECK needs cniVersion 0.4.0 or later",
        ),
        row(
            "STATUS in 1.0.0",
            "STATUS",
            "",
            None,
            &env.conf("1.0.0"),
            1,
            "config version 1.0.0 does not allow STATUS",
        ),
        row(
            "GC in 0.4.0",
            "GC",
            "",
            None,
            &env.conf_with("0.4.0", "cni.dev/valid-attachments", json!([])),
            1,
            "config version 0.4.0 does not allow GC",
        ),
        // Paths.
        row(
            "dataDir empty",
            "ADD",
            "eth0",
            pod(),
            &env.conf_with("1.1.0", "dataDir", json!("")),
            7,
            r#"dataDir "" must be an absolute path"#,
        ),
        row(
            "dataDir relative",
            "ADD",
            "eth0",
            pod(),
            &env.conf_with("1.1.0", "dataDir", json!("relative-ipam")),
            7,
            r#"dataDir "relative-ipam" must be an absolute path"#,
        ),
        row(
            "dataDir relative, DEL",
            "DEL",
            "eth0",
            pod(),
            &env.conf_with("1.1.0", "dataDir", json!("relative-ipam")),
            7,
            r#"dataDir "relative-ipam" must be an absolute path"#,
        ),
        row(
            "podCIDRFile relative",
            "STATUS",
            "",
            None,
            &env.conf_file("1.1.0", Path::new("pod-cidr")),
            7,
            r#"podCIDRFile "pod-cidr" must be an absolute path"#,
        ),
        // Pod ranges.
        cidr("0.0.0.0/0", "is every IPv4 address"),
        cidr(
            "224.0.0.0/24",
            "is not a unicast range: it overlaps 224.0.0.0/4 (multicast)",
        ),
        cidr(
            "255.255.255.248/29",
            "is not a unicast range: it overlaps 240.0.0.0/4 (reserved, with the broadcast address)",
        ),
        cidr(
            "127.0.0.0/24",
            "is not a unicast range: it overlaps 127.0.0.0/8 (loopback)",
        ),
        cidr(
            "169.254.0.0/24",
            "is not a unicast range: it overlaps 169.254.0.0/16 (link-local)",
        ),
        cidr("10.1.0.0/30", "is too small"),
        cidr("10.1.0.0/31", "is too small"),
        // IPv6 pod ranges.
        cidr("::/0", "is every IPv6 address"),
        cidr(
            "fd00::/121",
            "is too small: an IPv6 prefix must be /120 or shorter (a /120 holds 254 pods)",
        ),
        cidr("fd00::1/64", "has host bits set (did you mean fd00::/64?)"),
        cidr(
            "ff02::/16",
            "is not a unicast range: it overlaps ff00::/8 (multicast)",
        ),
        cidr(
            "fe80::/64",
            "is not a unicast range: it overlaps fe80::/10 (link-local)",
        ),
        cidr(
            "::/120",
            "is not a unicast range: it overlaps ::1/128 (loopback)",
        ),
        cidr(
            "::ffff:0.0.0.0/96",
            "is not a unicast range: it overlaps ::ffff:0.0.0.0/96 (IPv4-mapped)",
        ),
        cidrs(
            json!(["10.1.0.0/24", "10.2.0.0/24"]),
            "podCIDRs has two IPv4 ranges (10.1.0.0/24, 10.2.0.0/24): give at most one per family",
        ),
        cidrs(
            json!(["fd00:1::/64", "fd00:2::/64"]),
            "podCIDRs has two IPv6 ranges (fd00:1::/64, fd00:2::/64): give at most one per family",
        ),
        cidrs(
            json!(["10.1.0.0/24", "fd00::/121"]),
            "podCIDRs[1] fd00::/121 is too small",
        ),
        cidrs(
            json!(["10.1.0.0/24", "fe80::/64"]),
            "podCIDRs[1] fe80::/64 is not a unicast range: it overlaps fe80::/10 (link-local)",
        ),
        cidrs(json!([]), "podCIDRs is empty"),
        cidrs(
            json!("10.1.0.0/24"),
            "podCIDRs must be a list of CIDR strings",
        ),
        row(
            "podCIDR not in podCIDRs",
            "ADD",
            "eth0",
            pod(),
            &env.conf_with("1.1.0", "podCIDRs", json!(["10.9.0.0/24", "fd00::/64"])),
            7,
            "podCIDR 10.251.0.0/24 is not one of podCIDRs (10.9.0.0/24,fd00::/64)",
        ),
        file(
            "ADD",
            &two_v4,
            7,
            " has two IPv4 ranges (10.1.0.0/24, 10.2.0.0/24): give at most one per family",
        ),
        file("ADD", &narrow_v6, 7, ": podCIDR fd00::/121 is too small"),
        file("STATUS", &two_v4, 50, " has two IPv4 ranges"),
        file(
            "ADD",
            &everything,
            7,
            ": podCIDR 0.0.0.0/0 is every IPv4 address",
        ),
        file(
            "ADD",
            &garbage,
            7,
            ": podCIDR \"banana\" is not an IPv4 CIDR",
        ),
        file("ADD", &empty, 7, " is empty"),
        file("ADD", &fifo, 7, " is a FIFO, not a regular file"),
        file(
            "ADD",
            &zero,
            7,
            " is a character device, not a regular file",
        ),
        file("STATUS", &empty, 50, " is empty"),
        file("STATUS", &fifo, 50, " is a FIFO, not a regular file"),
        file("STATUS", &zero, 50, " is a character device"),
        Row {
            stdin: {
                let mut c = env.conf_file("1.1.0", &fifo);
                c["prevResult"] =
                    json!({"cniVersion": "1.1.0", "ips": [{"address": "10.251.0.9/32"}]});
                c.to_string()
            },
            ..file("CHECK", &fifo, 7, " is a FIFO, not a regular file")
        },
    ];

    let before = env.snapshot();
    let mut failures = Vec::new();
    for r in &rows {
        let out = env.call_env(
            r.verb,
            r.cid,
            &r.ifname,
            r.netns.clone(),
            &r.stdin,
            &r.os_env,
        );
        let got = std::panic::catch_unwind(|| said(&out, r.code));
        match got {
            Ok(s) if s.contains(&r.says) => {}
            Ok(s) => failures.push(format!(
                "{} ({}): said {s:?}, expected {:?}",
                r.what, r.verb, r.says
            )),
            Err(_) => failures.push(format!(
                "{} ({}): expected code {}, got exit {} stdout {} stderr {}",
                r.what, r.verb, r.code, out.code, out.stdout, out.stderr
            )),
        }
        let after = env.snapshot();
        if after != before {
            failures.push(format!(
                "{} ({}): left something behind:\nbefore {before:#?}\nafter {after:#?}",
                r.what, r.verb
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert!(
        !Path::new("relative-ipam").exists(),
        "a relative dataDir was created"
    );
    env.assert_clean();
}

/// Variables that are not the plugin's business may hold anything.
#[test]
fn other_variables_that_are_not_utf8_are_ignored() {
    let env = Env::new("10.251.1.0/24");
    let junk = [
        ("LC_PETREL_TEST".into(), non_utf8()),
        (non_utf8(), "x".into()),
    ];
    let conf = env.conf("1.1.0").to_string();
    let out = env
        .call_env("ADD", "u", "eth0", Some(env.pod.path()), &conf, &junk)
        .ok();
    assert_eq!(out.json()["interfaces"][1]["name"], "eth0");
    assert_eq!(env.reservations().len(), 1);
    env.call_env("DEL", "u", "eth0", Some(env.pod.path()), &conf, &junk)
        .ok();
    env.assert_clean();
}

/// DEL and GC need no range: whatever the agent's pod CIDR file holds (nothing, garbage, a
/// FIFO), pods are torn down; the verbs that need it refuse clearly and never hang.
#[test]
fn del_and_gc_need_no_pod_cidr() {
    let env = Env::new("10.251.2.0/24");
    let file = env.files.path().join("pod-cidr");
    std::fs::write(&file, "10.251.2.0/24\n").expect("write");
    let conf = env.conf_file("1.1.0", &file);
    let second = NetNs::new(&unique("bp"));
    let add = |cid: &str, pod: &NetNs| env.call("ADD", cid, "eth0", Some(pod.path()), &conf).ok();
    add("d1", &env.pod);
    std::fs::write(&file, "").expect("empty the file");
    env.del("d1", "eth0", &conf).ok();
    assert_clean_but(&env, 0);

    std::fs::write(&file, "10.251.2.0/24\n").expect("write");
    add("d2", &env.pod);
    std::fs::write(&file, "10.251.2.0/33 garbage\n").expect("corrupt the file");
    env.gc(&conf, &[]).ok();
    assert_clean_but(&env, 0);

    std::fs::write(&file, "10.251.2.0/24\n").expect("write");
    add("d3", &env.pod);
    add("d4", &second);
    std::fs::remove_file(&file).expect("rm");
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let status = env.call("STATUS", "", "", None, &conf);
    assert!(
        said(&status, 50).contains("is a FIFO, not a regular file"),
        "{status:?}"
    );
    let add = env.call("ADD", "d5", "eth0", Some(env.pod.path()), &conf);
    assert!(said(&add, 7).contains("is a FIFO"), "{add:?}");
    assert_clean_but(&env, 2);
    env.del("d3", "eth0", &conf).ok();
    assert_clean_but(&env, 1);
    env.gc(&conf, &[]).ok();
    env.assert_clean();
}

fn assert_clean_but(env: &Env, reservations: usize) {
    assert_eq!(env.reservations().len(), reservations, "reservations");
    assert_eq!(petrel_links(&env.node).len(), reservations, "links");
}

/// A GC in a version that has no GC frees nothing, even with an empty attachment list.
#[test]
fn gc_in_an_older_version_frees_nothing() {
    let env = Env::new("10.251.3.0/24");
    env.add("g1", "eth0").ok();
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        let out = env.gc(&env.conf(version), &[]);
        assert!(said(&out, 1).contains("does not allow GC"), "{out:?}");
        assert_clean_but(&env, 1);
    }
    env.gc(&env.conf("1.1.0"), &[]).ok();
    env.assert_clean();
}

/// petrel-cni wires one interface per pod: a second ADD of the same container with another
/// CNI_IFNAME is refused before anything is reserved or created, naming the first interface.
#[test]
fn a_second_interface_in_one_pod_is_refused() {
    let env = Env::new("10.251.4.0/24");
    env.add("two", "eth0").ok();
    let before = env.snapshot();
    let out = env.add("two", "net1");
    assert!(
        said(&out, 4).contains(
            "CNI_IFNAME net1: container two already has interface eth0 from petrel-cni, and petrel-cni wires one interface per pod"
        ),
        "{out:?}"
    );
    assert_eq!(env.snapshot(), before, "the refused ADD changed something");
    // The runtime's DEL of the refused attachment succeeds and leaves eth0 alone.
    env.del("two", "net1", &env.conf("1.1.0")).ok();
    assert_eq!(env.snapshot(), before);
    env.del("two", "eth0", &env.conf("1.1.0")).ok();
    env.assert_clean();
}

/// Entries named like an IP that petrel did not write (a directory, someone's file, a FIFO)
/// are skipped by ADD, DEL, GC and STATUS and left exactly as they were.
#[test]
fn strays_in_the_store_are_skipped_and_left_alone() {
    let env = Env::new("10.251.5.0/29");
    let store = env.data.path().join("petrel");
    std::fs::create_dir(store.join("10.251.5.2")).expect("mkdir");
    std::fs::write(store.join("10.251.5.2/inside"), b"x").expect("write");
    std::fs::write(store.join("10.251.5.3"), b"my notes").expect("write");
    nix::unistd::mkfifo(&store.join("10.251.5.4"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let strays = || -> Vec<String> {
        tree(&store)
            .into_iter()
            .filter(|l| {
                l.starts_with("10.251.5.2")
                    || l.starts_with("10.251.5.3")
                    || l.starts_with("10.251.5.4")
            })
            .collect()
    };
    let before = strays();
    assert_eq!(before.len(), 4, "{before:?}");

    let ip = env.add("s1", "eth0").ok().json()["ips"][0]["address"].clone();
    assert_eq!(
        ip, "10.251.5.5/32",
        "the strays' addresses are not handed out"
    );
    env.call("STATUS", "", "", None, &env.conf("1.1.0")).ok();
    env.del("other", "eth0", &env.conf("1.1.0")).ok();
    env.gc(&env.conf("1.1.0"), &["s1"]).ok();
    assert_clean_but(&env, 1);
    env.del("s1", "eth0", &env.conf("1.1.0")).ok();
    env.gc(&env.conf("1.1.0"), &[]).ok();
    env.assert_clean();
    assert_eq!(strays(), before, "strays untouched");
    assert_eq!(
        std::fs::read(store.join("10.251.5.3")).expect("read"),
        b"my notes"
    );
}

/// A small tmpfs mounted on a folder of the test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        petrel_testbed::netns::sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "petrel-test",
                &dir.path().display().to_string(),
            ],
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// A full disk: STATUS says the plugin is not available (50) and why; ADD fails with an I/O
/// error and leaves no temporary file, reservation or link; once space is back, both work.
#[test]
fn full_disk_status_unavailable_and_add_leaves_nothing() {
    let mut env = Env::new("10.251.6.0/24");
    let fs = Tmpfs::new("256k");
    env.data = tempfile::tempdir_in(fs.path()).expect("tempdir on tmpfs");
    env.call("STATUS", "", "", None, &env.conf("1.1.0")).ok();

    // Fill it.
    let filler = fs.path().join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    drop(f);

    let out = env.call("STATUS", "", "", None, &env.conf("1.1.0"));
    assert!(
        said(&out, 50).contains("no space left for a reservation in"),
        "{out:?}"
    );
    let before = env.snapshot();
    let out = env.add("full", "eth0");
    let s = said(&out, 5);
    assert!(
        s.contains("reserving") && s.contains("No space left on device"),
        "{s}"
    );
    assert_eq!(env.snapshot(), before, "the failed ADD left something");
    env.assert_clean();

    std::fs::remove_file(&filler).expect("free the space");
    env.call("STATUS", "", "", None, &env.conf("1.1.0")).ok();
    env.add("full", "eth0").ok();
    env.del("full", "eth0", &env.conf("1.1.0")).ok();
    env.assert_clean();
    // The store goes before the mount.
    drop(env);
    drop(fs);
}
