//! A real kube-apiserver v1.20.2 (built from Debian's `kubernetes` source by `cargo xtask setup`)
//! on a real etcd (Debian's etcd-server), both bound to 127.0.0.1 on free ports, stopped by PID on
//! drop.
//!
//! v1.20 has no built-in discovery.k8s.io/v1, so the server starts with the v1beta1 group off and
//! EndpointSlice v1 is served by a CRD (tests/testbed/fixtures/endpointslice-v1-crd.yaml). No
//! controller-manager runs: tests create Services, EndpointSlices and Nodes themselves.
//! `start_v1beta1` starts it as a 1.20 cluster really is: built-in discovery.k8s.io/v1beta1
//! EndpointSlices, no v1.

use std::{
    fs,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

const CRD: &str = include_str!("../fixtures/endpointslice-v1-crd.yaml");
const TOKEN: &str = "petrel-test-token";

/// Which EndpointSlice API the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slices {
    /// discovery.k8s.io/v1 from the CRD, the built-in v1beta1 off.
    V1Crd,
    /// The built-in discovery.k8s.io/v1beta1 only (what 1.20 serves).
    V1beta1,
    /// No EndpointSlice API at all: a list of them never completes.
    None,
}

pub struct KubeApiServer {
    dir: tempfile::TempDir,
    etcd: Child,
    apiserver: Child,
    bin: PathBuf,
    args: Vec<String>,
    pub port: u16,
}

/// Where `cargo xtask setup` put the binaries.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("PETREL_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/petrel/kube/bin")
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed by `cargo xtask setup`");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn(program: &Path, args: &[String], log: &Path) -> Child {
    let log = fs::File::create(log).expect("create log");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
}

impl KubeApiServer {
    /// Starts etcd and kube-apiserver on 127.0.0.1 and waits until Services and
    /// discovery.k8s.io/v1 EndpointSlices can be listed (about 10 s).
    pub async fn start() -> KubeApiServer {
        Self::start_on(Ipv4Addr::LOCALHOST).await
    }

    /// As `start`, with the API server on `addr` (an address of the calling thread's network
    /// namespace, so that simulated nodes in other namespaces can reach it); etcd stays on
    /// 127.0.0.1. Processes started here live in the calling thread's namespace.
    pub async fn start_on(addr: Ipv4Addr) -> KubeApiServer {
        Self::start_with(addr, Slices::V1Crd).await
    }

    /// As `start`, serving EndpointSlices as a 1.20 server does: discovery.k8s.io/v1beta1 only.
    pub async fn start_v1beta1() -> KubeApiServer {
        Self::start_with(Ipv4Addr::LOCALHOST, Slices::V1beta1).await
    }

    /// As `start`, with no EndpointSlice API: a client's list of them never completes (as a
    /// list that takes very long).
    pub async fn start_without_slices() -> KubeApiServer {
        Self::start_with(Ipv4Addr::LOCALHOST, Slices::None).await
    }

    async fn start_with(addr: Ipv4Addr, slices: Slices) -> KubeApiServer {
        let bin = bin_dir().join("kube-apiserver");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo xtask setup` (it builds kube-apiserver from Debian's source)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("petrel-apiserver-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=petrel-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=kube-apiserver",
                "-keyout",
                "apiserver.key",
                "-out",
                "apiserver.csr",
            ],
        );
        fs::write(
            d.join("ext.cnf"),
            format!("subjectAltName=IP:127.0.0.1,IP:{addr},DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
        )
        .expect("write ext.cnf");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "apiserver.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "apiserver.crt",
            ],
        );
        openssl(d, &["genrsa", "-out", "sa.key", "2048"]);
        fs::write(
            d.join("tokens.csv"),
            format!("{TOKEN},admin,admin,system:masters\n"),
        )
        .expect("tokens");

        let (etcd_port, peer_port, port) = (free_port(), free_port(), free_port());
        let p = |s: &str| d.join(s).display().to_string();
        let etcd_args: Vec<String> = vec![
            "--name=petrel-test".into(),
            format!("--data-dir={}", p("etcd-data")),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=petrel-test=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync".into(),
            // bbolt grows far faster than the data under a burst of writes (pages freed while the API
            // server's reads are open are not reused): the benchmark's 30,000 objects outgrow 1 GiB.
            "--quota-backend-bytes=8589934592".into(),
        ];
        let etcd = spawn(Path::new("etcd"), &etcd_args, &d.join("etcd.log"));
        let mut api_args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--bind-address={addr}"),
            format!("--advertise-address={addr}"),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--service-node-port-range=30000-32767".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.key")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
        ];
        if slices != Slices::V1beta1 {
            // 1.20 serves EndpointSlice only as v1beta1: switch it off so the v1 CRD can serve.
            api_args.push("--runtime-config=discovery.k8s.io/v1beta1=false".into());
        }
        let apiserver = spawn(&bin, &api_args, &d.join("apiserver.log"));
        fs::write(
            d.join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}:{port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin, namespace: default}}\ncurrent-context: test\n",
                p("ca.crt")
            ),
        )
        .expect("write kubeconfig");
        let mut server = KubeApiServer {
            dir,
            etcd,
            apiserver,
            bin,
            args: api_args,
            port,
        };
        server.wait_ready(slices).await;
        server
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig to config");
        Client::try_from(config).expect("client")
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_ready(&mut self, slices: Slices) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let client = self.client().await;
        // 1. Services can be listed and the bootstrap `kubernetes` service exists.
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        loop {
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                panic!("kube-apiserver exited ({status}):\n{}", self.log_tail());
            }
            if services
                .get_opt("kubernetes")
                .await
                .is_ok_and(|s| s.is_some())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 90 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if slices != Slices::V1Crd {
            return;
        }
        // 2. The EndpointSlice v1 CRD is established and listable.
        let crd: CustomResourceDefinition = serde_yaml::from_str(CRD).expect("CRD fixture parses");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &crd)
            .await
            .expect("create EndpointSlice v1 CRD");
        let slices: Api<EndpointSlice> = Api::all(client);
        loop {
            if slices.list(&ListParams::default()).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "EndpointSlice v1 CRD not served after 90 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the API server (etcd keeps its data), as an outage would.
    pub fn stop_apiserver(&mut self) {
        stop(&mut self.apiserver);
    }

    /// Starts the API server again on the same port and data, and waits until it serves.
    pub async fn restart_apiserver(&mut self) {
        self.apiserver = spawn(
            &self.bin,
            &self.args,
            &self.dir.path().join("apiserver-2.log"),
        );
        let client = self.client().await;
        let services: Api<Service> = Api::namespaced(client, "default");
        let deadline = Instant::now() + Duration::from_secs(90);
        while services.list(&ListParams::default()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "kube-apiserver did not come back:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// PID of the kube-apiserver process.
    pub fn pid(&self) -> u32 {
        self.apiserver.id()
    }
}

fn stop(child: &mut Child) {
    crate::stop_child(child, libc::SIGTERM, Duration::from_secs(5));
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        stop(&mut self.apiserver);
        stop(&mut self.etcd);
    }
}
