//! The deployment manifests (`deploy/`) against the real kube-apiserver fixture:
//!
//! * every object the kustomization lists passes a server-side dry-run, and the server keeps
//!   every field it was sent (the 1.20 server silently drops unknown or misplaced fields, so a
//!   typo would otherwise pass);
//! * the agent syncs with nothing but the shipped ClusterRole (a real ServiceAccount token from
//!   the TokenRequest API), the shipped ConfigMap's configuration, and exactly the capabilities
//!   the DaemonSet grants its container (a bounding set applied with setpriv).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams, PostParams},
    core::GroupVersionKind,
    discovery::{Scope, pinned_kind},
};
use petrel_datapath::{Frontend, Proto, ServiceMaps};
use petrel_testbed::{
    BpffsRoot,
    agent::{Agent, eventually},
    apiserver::KubeApiServer,
    cgroup::Cgroup,
    cluster::{create_node, create_service},
    netns::NetNs,
    require_root, unique,
};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every document of a YAML file, as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            serde_json::to_value(v).expect("YAML maps to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The files the kustomization lists, in its order; it must list every manifest in deploy/.
fn kustomization_resources() -> Vec<PathBuf> {
    let dir = deploy_dir();
    let k = documents(&dir.join("kustomization.yaml"));
    let listed: Vec<String> = k[0]["resources"]
        .as_array()
        .expect("kustomization lists resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_string())
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, on_disk,
        "kustomization.yaml must list every manifest"
    );
    listed.into_iter().map(|f| dir.join(f)).collect()
}

/// Paths of fields in `sent` that `kept` lacks.
fn dropped_fields(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(w) => dropped_fields(v, w, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, v) in a.iter().enumerate() {
                match b.get(i) {
                    Some(w) => dropped_fields(v, w, &format!("{path}[{i}]"), out),
                    None => out.push(format!("{path}[{i}]")),
                }
            }
        }
        _ => {}
    }
}

/// Creates `doc` (dry run or for real) and returns what the server made of it.
async fn create(client: &Client, doc: &Value, dry_run: bool) -> Value {
    let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("a Kubernetes object");
    let types = obj.types.as_ref().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(types).expect("valid apiVersion");
    let (ar, caps) = pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("the API server does not serve {gvk:?}: {e}"));
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj.metadata.namespace.as_deref().unwrap_or("default"),
            &ar,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let pp = PostParams {
        dry_run,
        ..Default::default()
    };
    let made = api
        .create(&pp, &obj)
        .await
        .unwrap_or_else(|e| panic!("{} {:?}: {e}", types.kind, obj.metadata.name));
    serde_json::to_value(made).expect("JSON")
}

/// Runs `body` on a thread inside a fresh network namespace (the API server fixture binds
/// 127.0.0.1 there), with a runtime of its own.
fn in_namespace<F, Fut>(ns: &NetNs, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    ns.run(move || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(body())
    });
}

#[test]
fn every_manifest_passes_a_server_side_dry_run_and_keeps_every_field() {
    require_root();
    let ns = NetNs::new(&unique("pd"));
    in_namespace(&ns, || async {
        let api = KubeApiServer::start().await;
        let client = api.client().await;
        let mut checked = Vec::new();
        for file in kustomization_resources() {
            for doc in documents(&file) {
                let kind = doc["kind"].as_str().unwrap_or("?").to_string();
                let made = create(&client, &doc, true).await;
                let mut dropped = Vec::new();
                dropped_fields(&doc, &made, "", &mut dropped);
                assert!(
                    dropped.is_empty(),
                    "{}: the API server dropped {dropped:?} from the {kind} (unknown or misplaced fields)",
                    file.display()
                );
                // Namespaced objects need their namespace to exist, even for a dry run.
                if kind == "Namespace" {
                    create(&client, &doc, false).await;
                }
                checked.push(kind);
            }
        }
        checked.sort();
        assert_eq!(
            checked,
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
                "Namespace",
                "Role",
                "RoleBinding",
                "ServiceAccount"
            ]
        );
    });
}

/// The capabilities the DaemonSet's agent container adds, e.g. ["NET_ADMIN", "BPF"].
fn daemonset_capabilities() -> Vec<String> {
    let ds = &documents(&deploy_dir().join("daemonset.yaml"))[0];
    let agent = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("an agent container");
    let sc = &agent["securityContext"];
    assert_eq!(
        sc["privileged"], false,
        "the agent container is not privileged"
    );
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    sc["capabilities"]["add"]
        .as_array()
        .expect("added capabilities")
        .iter()
        .map(|c| c.as_str().expect("a name").to_string())
        .collect()
}

/// The ConfigMap's agent configuration.
fn configmap_config() -> String {
    let cm = &documents(&deploy_dir().join("configmap.yaml"))[0];
    cm["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml in the ConfigMap")
        .to_string()
}

/// Bit numbers of the capabilities we name (linux/capability.h).
fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("add {other} to cap_bit"),
    }
}

#[test]
fn the_agent_syncs_with_only_the_deployed_role_config_and_capabilities() {
    require_root();
    let caps = daemonset_capabilities();
    let ns = NetNs::new(&unique("pd"));
    // The node's uplink, holding the address its Node object names.
    ns.exec(
        "ip",
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ],
    );
    ns.exec("ip", &["link", "set", "eth0-peer", "up"]);
    ns.exec("ip", &["addr", "add", "10.99.0.1/24", "dev", "eth0"]);
    ns.exec("ip", &["link", "set", "eth0", "up"]);
    let pins = BpffsRoot::new(&unique("petrel-deploy-"));
    let cgroup = Cgroup::new(&unique("petrel-deploy-"));
    let files = tempfile::tempdir().expect("tempdir");
    let (ns_path, pins_path, cg_path, dir) = (
        ns.path(),
        pins.path().to_path_buf(),
        cgroup.path().to_path_buf(),
        files.path().to_path_buf(),
    );
    in_namespace(&ns, move || async move {
        let api = KubeApiServer::start().await;
        let admin = api.client().await;
        // The shipped identity and role, for real.
        for f in [
            "namespace.yaml",
            "serviceaccount.yaml",
            "clusterrole.yaml",
            "clusterrolebinding.yaml",
        ] {
            for doc in documents(&deploy_dir().join(f)) {
                create(&admin, &doc, false).await;
            }
        }
        let tr = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(admin.clone(), "petrel-system")
            .create_token_request("petrel-agent", &PostParams::default(), &tr)
            .await
            .expect("TokenRequest for petrel-agent")
            .status
            .expect("token status")
            .token;
        let admin_kc = std::fs::read_to_string(api.kubeconfig()).expect("kubeconfig");
        let kc = dir.join("agent-kubeconfig");
        let agent_kc = admin_kc
            .lines()
            .map(|l| match l.trim_start().strip_prefix("token: ") {
                Some(_) => format!("    token: {token}"),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&kc, agent_kc).expect("write kubeconfig");

        // The token is the ServiceAccount's, with the role's rights and no more.
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kc).expect("read"),
            &Default::default(),
        )
        .await
        .expect("config");
        let sa = Client::try_from(config).expect("client");
        Api::<k8s_openapi::api::core::v1::Node>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .expect("the role may list nodes");
        match Api::<Secret>::all(sa).list(&ListParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            other => panic!("the agent's token must not read Secrets: {other:?}"),
        }

        create_node(
            &admin,
            "n1",
            Ipv4Addr::new(10, 99, 0, 1),
            "10.244.1.0/24".parse().expect("cidr"),
        )
        .await;
        let backends = [(Ipv4Addr::new(10, 244, 1, 5), "n1".to_string())];
        let vip = create_service(&admin, "web", 30080, &backends).await;

        // The agent: the ConfigMap's configuration, paths of this test on the command line
        // (flags win over the file), the DaemonSet's capabilities and nothing else.
        let config_file = dir.join("config.yaml");
        std::fs::write(&config_file, configmap_config()).expect("config");
        let bounding = std::iter::once("-all".to_string())
            .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
            .collect::<Vec<_>>()
            .join(",");
        let bounding_arg = format!("--bounding-set={bounding}");
        let d = |s: &str| dir.join(s).display().to_string();
        let args: Vec<String> = vec![
            format!("--config={}", config_file.display()),
            format!("--kubeconfig={}", kc.display()),
            "--node-name=n1".into(),
            format!("--bpffs-root={}", pins_path.display()),
            format!("--cgroup-root={}", cg_path.display()),
            "--proc-sys-net=/proc/sys/net".into(),
            format!("--state-dir={}", d("state")),
            format!("--pod-cidr-file={}", d("pod-cidr")),
            format!("--cni-conf-file={}", d("05-petrel.conflist")),
            "--log-format=text".into(),
        ];
        let mut agent = Agent::start_wrapped(&ns_path, &["setpriv", &bounding_arg, "--"], &args);
        let pid = agent.pid().expect("running");

        let maps_dir = pins_path.join("maps");
        let frontend = Frontend {
            addr: vip,
            port: 80,
            proto: Proto::Tcp,
        };
        let programmed = || {
            ServiceMaps::open(&maps_dir)
                .and_then(|m| m.dump())
                .is_ok_and(|d| d.iter().any(|s| s.frontend == frontend))
        };
        let what = format!("the agent to program {}", SocketAddrV4::new(vip, 80));
        eventually(&what, 30, || programmed() || agent.exited());
        assert!(!agent.exited(), "the agent exited:\n{}", agent.log());
        assert!(programmed());
        eventually("the conflist", 10, || {
            dir.join("05-petrel.conflist").exists()
        });

        // It ran with exactly the DaemonSet's capabilities, and nothing failed for want of one.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|h| u64::from_str_radix(h.trim(), 16).expect("hex"))
            .expect("CapEff");
        let want = caps.iter().fold(0u64, |m, c| m | 1 << cap_bit(c));
        assert_eq!(eff, want, "effective capabilities {eff:#x}, want {caps:?}");
        let log = agent.log();
        for needed in [
            "socket-level load balancing attached",
            "node interface attached",
            "routing to other nodes' pods",
            "datapath updated",
        ] {
            assert!(log.contains(needed), "no {needed:?} in:\n{log}");
        }
        assert!(
            !log.contains("ERROR") && !log.contains("ermission denied"),
            "the agent hit errors:\n{log}"
        );
        drop(agent);
        drop(api);
    });
    drop((pins, cgroup, files));
}
