//! Prometheus metrics with the names operators already graph for kube-proxy, plus petrel's own,
//! and the HTTP endpoints kube-proxy has: `/metrics` and `/proxyMode` (127.0.0.1:10249 by
//! default), `/healthz` and `/livez` (port 10256; their semantics are `health`'s).

use std::{convert::Infallible, sync::Arc, sync::atomic::AtomicU64};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use petrel_datapath::maps::MapStore;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{health::ProxierHealth, sync::Syncer};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// An HTTP status code, as kube-proxy labels its healthz and livez counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// What failed in a socket termination run (`sock_term::FailureKind::name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CounterLabel {
    pub counter: String,
}

pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub network_programming: Histogram,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub services: Gauge,
    pub backends: Gauge,
    pub map_fill: Family<MapLabel, Gauge<f64, AtomicU64>>,
    pub datapath: Family<CounterLabel, Gauge>,
    pub sync_errors: Counter,
    pub refused: Gauge,
    /// Frontend refusals by reason (map_full, too_many_backends, map_error): one per frontend
    /// per sync that refused it.
    pub refused_total: Family<ReasonLabel, Counter>,
    /// Frontends that want Maglev and select at random for want of a ring.
    pub maglev_fallbacks: Gauge,
    /// Service ports petrel cannot serve (SCTP) at the last sync.
    pub unsupported_ports: Gauge,
    /// Pod interfaces wired, by what found them (`notification`, `scan`).
    pub pods_attached: Family<KindLabel, Counter>,
    pub manifest_errors: Gauge,
    /// Manifest objects refused (invalid, or in conflict with an older one), by reason.
    pub manifest_refused: Family<ReasonLabel, Gauge>,
    /// 1 while the manifests folder can be read, 0 while the last good state is kept.
    pub manifest_source_ok: Gauge,
    /// 1 while this Node's podCIDR is one petrel-cni cannot use (not written for it).
    pub pod_cidr_refused: Gauge,
    /// Other CNI configs sorting before petrel's conflist (the runtime would use them).
    pub cni_config_shadowed: Gauge,
    pub node_routes: Gauge,
    pub ct_entries: Gauge,
    pub ct_fill: Gauge<f64, AtomicU64>,
    pub ct_gc_runs: Counter,
    pub ct_gc_removed: Family<ReasonLabel, Counter>,
    pub ct_gc_duration: Histogram,
    pub ct_gc_interval: Gauge<f64, AtomicU64>,
    pub healthz: Family<CodeLabel, Counter>,
    pub livez: Family<CodeLabel, Counter>,
    /// Health check node ports being served, and the ones that could not be bound.
    pub hc_ports_open: Gauge,
    pub hc_ports_failed: Gauge,
    pub hc_bind_errors: Counter,
    /// Connected UDP sockets destroyed because their backend went, and the failures.
    pub sockets_terminated: Counter,
    pub socket_terminate_errors: Family<KindLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let network_programming = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let m = Metrics {
            sync_duration,
            network_programming,
            last_sync: Gauge::default(),
            services: Gauge::default(),
            backends: Gauge::default(),
            map_fill: Family::default(),
            datapath: Family::default(),
            sync_errors: Counter::default(),
            refused: Gauge::default(),
            refused_total: Family::default(),
            maglev_fallbacks: Gauge::default(),
            unsupported_ports: Gauge::default(),
            pods_attached: Family::default(),
            manifest_errors: Gauge::default(),
            manifest_refused: Family::default(),
            manifest_source_ok: Gauge::default(),
            pod_cidr_refused: Gauge::default(),
            cni_config_shadowed: Gauge::default(),
            node_routes: Gauge::default(),
            ct_entries: Gauge::default(),
            ct_fill: Gauge::default(),
            ct_gc_runs: Counter::default(),
            ct_gc_removed: Family::default(),
            ct_gc_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ct_gc_interval: Gauge::default(),
            healthz: Family::default(),
            livez: Family::default(),
            hc_ports_open: Gauge::default(),
            hc_ports_failed: Gauge::default(),
            hc_bind_errors: Counter::default(),
            sockets_terminated: Counter::default(),
            socket_terminate_errors: Family::default(),
            registry: Registry::default(),
        };
        // One call per metric, name and help side by side: the metrics are of different types,
        // so a table would need boxing for no gain.
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds (petrel: one sync of the maps)",
            m.sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In-cluster network programming latency in seconds, from the EndpointSlice last-change-trigger-time",
            m.network_programming.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time the datapath was successfully synced",
            m.last_sync.clone(),
        );
        registry.register(
            "petrel_services",
            "Service frontends programmed",
            m.services.clone(),
        );
        registry.register("petrel_backends", "Backends programmed", m.backends.clone());
        registry.register(
            "petrel_map_fill_ratio",
            "Entries in use over capacity, per map",
            m.map_fill.clone(),
        );
        registry.register(
            "petrel_datapath_packets",
            "Datapath counters (per-CPU, summed), by name",
            m.datapath.clone(),
        );
        registry.register(
            "petrel_sync_errors",
            "Syncs that left something unprogrammed",
            m.sync_errors.clone(),
        );
        registry.register(
            "petrel_service_ports_unsupported",
            "Service ports not programmed at the last sync because petrel cannot serve their protocol (SCTP)",
            m.unsupported_ports.clone(),
        );
        registry.register(
            "petrel_pod_interfaces_attached",
            "Pod interfaces the TC programs were attached to, by what found them (kind: notification, scan)",
            m.pods_attached.clone(),
        );
        registry.register(
            "petrel_frontends_refused",
            "Frontends refused at the last sync (map full, errors)",
            m.refused.clone(),
        );
        registry.register(
            "petrel_frontend_refusals",
            "Frontend refusals, by reason (map_full: the SERVICES map would overflow; too_many_backends; map_error): one per frontend per sync that refused it",
            m.refused_total.clone(),
        );
        registry.register(
            "petrel_maglev_fallback_frontends",
            "Frontends that want Maglev and select backends at random because every ring (--maglev-rings) is in use",
            m.maglev_fallbacks.clone(),
        );
        registry.register(
            "petrel_manifest_errors",
            "Manifest files skipped at the last read (standalone mode)",
            m.manifest_errors.clone(),
        );
        registry.register(
            "petrel_manifest_refused",
            "Manifest objects refused at the last read, by reason (invalid, duplicate_name, duplicate_port, duplicate_node_port)",
            m.manifest_refused.clone(),
        );
        registry.register(
            "petrel_manifest_source_ok",
            "1 while the manifests folder can be read; 0 while it cannot and the last good state is kept",
            m.manifest_source_ok.clone(),
        );
        registry.register(
            "petrel_pod_cidr_refused",
            "1 while this Node's podCIDR is one petrel-cni cannot use (not IPv4 unicast, or longer than /29): it is not written for petrel-cni",
            m.pod_cidr_refused.clone(),
        );
        registry.register(
            "petrel_cni_config_shadowed",
            "Other CNI configs in the conflist's folder that sort before petrel's, so the container runtime would give pods their network (0 when petrel's is the one used)",
            m.cni_config_shadowed.clone(),
        );
        registry.register(
            "petrel_node_routes",
            "Other nodes whose pod CIDR this node routes to",
            m.node_routes.clone(),
        );
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "petrel_conntrack_entries",
            "Conntrack entries after the last sweep (two per connection)",
            m.ct_entries.clone(),
        );
        registry.register(
            "petrel_conntrack_fill_ratio",
            "Conntrack entries over the map's capacity, after the last sweep",
            m.ct_fill.clone(),
        );
        registry.register(
            "petrel_sockets_terminated",
            "Connected UDP sockets destroyed (SOCK_DESTROY) because socket-LB had sent them to a backend that left their service",
            m.sockets_terminated.clone(),
        );
        registry.register(
            "petrel_socket_terminate_errors",
            "Failures while terminating sockets on removed backends, by kind (namespaces, enter, dump, destroy, map)",
            m.socket_terminate_errors.clone(),
        );
        registry.register(
            "petrel_conntrack_gc_runs",
            "Conntrack garbage collection sweeps",
            m.ct_gc_runs.clone(),
        );
        registry.register(
            "petrel_conntrack_gc_removed",
            "Entries removed by the conntrack garbage collector (conntrack entries one each, affinity entries as affinity_*), by reason",
            m.ct_gc_removed.clone(),
        );
        registry.register(
            "petrel_conntrack_gc_duration_seconds",
            "How long one conntrack garbage collection sweep took",
            m.ct_gc_duration.clone(),
        );
        registry.register(
            "petrel_conntrack_gc_interval_seconds",
            "The time until the next conntrack sweep, as adapted after the last one",
            m.ct_gc_interval.clone(),
        );
        registry.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz.clone(),
        );
        registry.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez.clone(),
        );
        registry.register(
            "petrel_health_check_node_ports_open",
            "Services whose healthCheckNodePort this node serves",
            m.hc_ports_open.clone(),
        );
        registry.register(
            "petrel_health_check_node_ports_failed",
            "Services whose healthCheckNodePort could not be bound at the last sync (retried at every sync)",
            m.hc_ports_failed.clone(),
        );
        registry.register(
            "petrel_health_check_node_port_bind_errors",
            "Attempts to bind a healthCheckNodePort that failed",
            m.hc_bind_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What kube-proxy prints at /proxyMode (iptables, ipvs, nftables); petrel's datapath is eBPF.
pub const PROXY_MODE: &str = "ebpf";

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// The answer to one request on the metrics or health address (both serve every path, so
/// probes and scrapes that predate the split keep working).
fn route(path: &str, metrics: &Metrics, health: &ProxierHealth) -> Response<Full<Bytes>> {
    let json = |family: &Family<CodeLabel, Counter>, r: crate::health::Reply| {
        family
            .get_or_create(&CodeLabel {
                code: r.status.as_u16().to_string(),
            })
            .inc();
        respond(r.status, "application/json", r.body)
    };
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.encode(),
        ),
        "/healthz" => json(&metrics.healthz, health.healthz()),
        "/livez" => json(&metrics.livez, health.livez()),
        "/proxyMode" => respond(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            PROXY_MODE.into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves `/metrics`, `/healthz`, `/livez` and `/proxyMode` on `listener` until the process
/// exits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<ProxierHealth>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = route(req.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(r) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

impl Metrics {
    /// The gauges that follow what is programmed: counts, map fill, datapath counters.
    pub fn update_gauges<S: MapStore>(&self, syncer: &Syncer<S>) {
        let (services, backends) = syncer.counts();
        self.services.set(services as i64);
        self.backends.set(backends as i64);
        self.maglev_fallbacks.set(syncer.maglev_fallbacks() as i64);
        let (used, cap) = syncer.fill();
        self.map_fill
            .get_or_create(&MapLabel {
                map: petrel_datapath::maps::SERVICES.into(),
            })
            .set(used as f64 / cap.max(1) as f64);
        if let Ok(stats) = syncer.maps().stats() {
            for (name, v) in stats {
                self.datapath
                    .get_or_create(&CounterLabel {
                        counter: name.into(),
                    })
                    .set(v as i64);
            }
        }
    }
}

/// Set by the EndpointSlice controller on each slice it writes: when the change that caused the
/// write happened (a pod became ready, a service changed).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// kubeproxy_network_programming_duration_seconds: from each EndpointSlice change's trigger time
/// (annotation set by the EndpointSlice controller) to the sync that programmed it. Each slice
/// version is observed once because `Memo::update` hands out only the slices it had not seen
/// (nothing here grows with the cluster); trigger times from before this agent started are not
/// observed (kube-proxy's trackerStartTime rule: after a restart they measure the downtime, not
/// programming).
#[derive(Debug)]
pub struct ProgrammingLatency {
    since: k8s_openapi::jiff::Timestamp,
}

impl Default for ProgrammingLatency {
    fn default() -> Self {
        ProgrammingLatency {
            since: k8s_openapi::jiff::Timestamp::now(),
        }
    }
}

impl ProgrammingLatency {
    /// Observes the slices programmed now, `fresh` ones only (new objects or versions).
    pub fn observe(&self, metrics: &Metrics, fresh: &[Arc<EndpointSlice>]) {
        let now = k8s_openapi::jiff::Timestamp::now();
        for s in fresh {
            if let Some(secs) = self.latency(s, now) {
                metrics.network_programming.observe(secs);
            }
        }
    }

    /// Seconds from `slice`'s trigger time to `now`; None without one, or for one before the
    /// agent started or after `now`.
    pub fn latency(&self, slice: &EndpointSlice, now: k8s_openapi::jiff::Timestamp) -> Option<f64> {
        let t = slice
            .metadata
            .annotations
            .as_ref()?
            .get(TRIGGER_TIME_ANNOTATION)?;
        let ts = t.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
        if ts < self.since || ts > now {
            return None;
        }
        Some((now.as_millisecond() - ts.as_millisecond()) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt as _;
        let bytes = r.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[test]
    fn programming_latency_counts_changes_since_the_start_only() {
        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        let start = Timestamp::now();
        let l = ProgrammingLatency { since: start };
        let at = |t: Timestamp| {
            let mut s = EndpointSlice::default();
            s.metadata.annotations =
                Some([(TRIGGER_TIME_ANNOTATION.to_string(), t.to_string())].into());
            s
        };
        let now = start + SignedDuration::from_millis(500);
        let ms = |t: Timestamp| l.latency(&at(t), now).map(|s| (s * 1000.0).round() as i64);
        assert_eq!(ms(start + SignedDuration::from_millis(200)), Some(300));
        // A change from before the restart: its time says how long the agent was down.
        assert_eq!(ms(start - SignedDuration::from_secs(3600)), None);
        assert_eq!(ms(now + SignedDuration::from_secs(1)), None, "clock skew");
        assert_eq!(l.latency(&EndpointSlice::default(), now), None);
    }

    #[tokio::test]
    async fn kube_proxys_urls_are_served() {
        let m = Metrics::new();
        let h = ProxierHealth::new(std::time::Duration::from_secs(60));
        let r = route("/proxyMode", &m, &h);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "ebpf");
        for path in ["/healthz", "/livez"] {
            let r = route(path, &m, &h);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-type"], "application/json");
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
            let json: serde_json::Value = serde_json::from_str(&body(r).await).expect("JSON body");
            assert!(json["lastUpdated"].is_string(), "{json}");
            assert!(json["currentTime"].is_string(), "{json}");
        }
        assert_eq!(route("/nope", &m, &h).status(), StatusCode::NOT_FOUND);
        let text = m.encode();
        for line in [
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 1",
            "petrel_health_check_node_ports_open 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn conntrack_metrics_are_exported_under_their_names() {
        let m = Metrics::new();
        crate::conntrack::register_reasons(&m);
        let text = m.encode();
        for name in [
            "petrel_conntrack_entries ",
            "petrel_conntrack_fill_ratio ",
            "petrel_conntrack_gc_runs_total ",
            "petrel_conntrack_gc_removed_total{reason=\"pressure\"} ",
            "petrel_conntrack_gc_duration_seconds_count ",
            "petrel_conntrack_gc_interval_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
