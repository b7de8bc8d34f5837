//! Health check node ports, as kube-proxy serves them (pkg/proxy/healthcheck,
//! service_health.go): for every LoadBalancer service with externalTrafficPolicy Local, an HTTP
//! server on its `spec.healthCheckNodePort` that answers 200 while this node has a ready endpoint
//! of the service (and the proxier is healthy), else 503, so a load balancer sends only to nodes
//! that can serve the traffic without leaving the node.
//!
//! Listeners open and close as services come and go (and move when the port changes). A port
//! that cannot be bound (another process holds it) is logged, counted and tried again at every
//! sync; it never fails the sync or the agent's health.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use tokio::task::{JoinHandle, JoinSet};

use crate::{
    desired::{HealthCheck, ServiceRef},
    health::ProxierHealth,
};

/// Local ready endpoints per service, shared with the HTTP handlers.
type Counts = Arc<RwLock<BTreeMap<ServiceRef, usize>>>;

/// One service's listeners (one per address). Dropping it closes them, and the connections
/// they accepted.
struct Instance {
    port: u16,
    tasks: Vec<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
}

impl Instance {
    /// Closes the listeners and waits until their sockets are gone, so the port can be bound
    /// again at once (by another service that now has it, in the same sync).
    async fn close(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            // A cancelled task's future (which owns the listener) is dropped before its
            // handle resolves.
            let _ = t.await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What one `sync` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthSyncReport {
    pub opened: usize,
    pub closed: usize,
    /// Services whose port could not be bound, with the port and why.
    pub failed: Vec<(ServiceRef, u16, String)>,
    /// Services served after the sync.
    pub open: usize,
}

pub struct ServiceHealthServer {
    /// Where every health check port listens: 0.0.0.0, or the addresses NodePorts are served on
    /// when they are given (as kube-proxy does with --nodeport-addresses).
    addrs: Vec<IpAddr>,
    proxier: Arc<ProxierHealth>,
    counts: Counts,
    open: BTreeMap<ServiceRef, Instance>,
    /// Services whose port could not be bound at the last sync: a failure is logged as a
    /// warning once per port, then at debug level while it lasts.
    failed: BTreeMap<ServiceRef, u16>,
}

impl ServiceHealthServer {
    pub fn new(addrs: Vec<IpAddr>, proxier: Arc<ProxierHealth>) -> ServiceHealthServer {
        ServiceHealthServer {
            addrs,
            proxier,
            counts: Arc::default(),
            open: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Serves exactly the services in `wanted`, with their local endpoint counts: closes first,
    /// then opens (a port one service gave up can be another's in the same sync).
    pub async fn sync(&mut self, wanted: &BTreeMap<ServiceRef, HealthCheck>) -> HealthSyncReport {
        let mut report = HealthSyncReport::default();
        // Counts first: a listener opened below answers with this sync's count at once.
        *self.counts.write().expect("counts poisoned") = wanted
            .iter()
            .map(|(s, h)| (s.clone(), h.local_endpoints))
            .collect();
        let gone: Vec<ServiceRef> = self
            .open
            .iter()
            .filter(|(svc, inst)| wanted.get(*svc).is_none_or(|h| h.port != inst.port))
            .map(|(svc, _)| svc.clone())
            .collect();
        for svc in gone {
            if let Some(inst) = self.open.remove(&svc) {
                tracing::info!(service = %svc, port = inst.port, "closing health check node port");
                inst.close().await;
                report.closed += 1;
            }
        }
        self.failed.retain(|svc, _| wanted.contains_key(svc));
        for (svc, hc) in wanted {
            if self.open.contains_key(svc) {
                continue;
            }
            match self.listen(svc, hc.port) {
                Ok(inst) => {
                    tracing::info!(service = %svc, port = hc.port, addrs = ?inst.addrs, "serving health check node port");
                    self.open.insert(svc.clone(), inst);
                    self.failed.remove(svc);
                    report.opened += 1;
                }
                Err(e) => {
                    if self.failed.insert(svc.clone(), hc.port) != Some(hc.port) {
                        tracing::warn!(service = %svc, port = hc.port, error = %e, "cannot bind the health check node port: load balancers will see this node as down for the service; retried at every sync");
                    } else {
                        tracing::debug!(service = %svc, port = hc.port, error = %e, "health check node port still cannot be bound");
                    }
                    report.failed.push((svc.clone(), hc.port, e.to_string()));
                }
            }
        }
        report.open = self.open.len();
        report
    }

    /// The addresses a service's health check listens on (empty when not served).
    pub fn local_addrs(&self, svc: &ServiceRef) -> Vec<SocketAddr> {
        self.open
            .get(svc)
            .map(|i| i.addrs.clone())
            .unwrap_or_default()
    }

    /// Binds `port` on every address, or none of them: a partial set is closed again (dropping
    /// `inst`) so that the next try starts clean.
    fn listen(&self, svc: &ServiceRef, port: u16) -> std::io::Result<Instance> {
        let mut inst = Instance {
            port,
            tasks: Vec::new(),
            addrs: Vec::new(),
        };
        for ip in &self.addrs {
            // std sets SO_REUSEADDR, as Go's net.Listen does: a port closed a moment ago (its
            // connections in TIME_WAIT) can be bound again at once.
            let l = std::net::TcpListener::bind(SocketAddr::new(*ip, port))?;
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            inst.addrs.push(l.local_addr()?);
            let (svc, counts, proxier) = (svc.clone(), self.counts.clone(), self.proxier.clone());
            inst.tasks
                .push(tokio::spawn(accept_loop(l, svc, counts, proxier)));
        }
        Ok(inst)
    }
}

/// Accepts until aborted; the connections live in a JoinSet so that aborting this task closes
/// them too (a load balancer's kept-alive connection must not outlive the service).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    svc: ServiceRef,
    counts: Counts,
    proxier: Arc<ProxierHealth>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (svc, counts, proxier) = (svc.clone(), counts.clone(), proxier.clone());
                    conns.spawn(async move {
                        let handler = service_fn(move |_req: Request<hyper::body::Incoming>| {
                            let count = counts.read().expect("counts poisoned").get(&svc).copied();
                            let r = respond(&svc, count, proxier.is_healthy());
                            async move { Ok::<_, Infallible>(r) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, handler)
                            .await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::debug!(service = %svc, error = %e, "health check accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The status and body kube-proxy answers with, whatever the method and path.
pub fn reply(
    svc: &ServiceRef,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> (StatusCode, String) {
    let status = if local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    // kube-proxy's layout, tabs included (its template, dedented).
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        quote(&svc.namespace),
        quote(&svc.name),
        local_endpoints,
        proxy_healthy
    );
    (status, body)
}

/// `count` None: the service was closed while a connection to it was still open. kube-proxy
/// answers that with an empty 200; petrel says 503, which is what a load balancer should act on.
fn respond(svc: &ServiceRef, count: Option<usize>, proxy_healthy: bool) -> Response<Full<Bytes>> {
    let local = count.unwrap_or(0);
    let (status, body) = reply(svc, local, proxy_healthy);
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-content-type-options", "nosniff")
        // Read by load balancers that weight nodes (GCE's WEIGHTED_MAGLEV); kube-proxy sends it
        // on every answer, 0 included.
        .header("x-load-balancing-endpoint-weight", local.to_string())
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::Ipv4Addr,
    };

    use super::*;

    fn svc(name: &str) -> ServiceRef {
        ServiceRef {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    #[test]
    fn reply_is_kube_proxys() {
        let (status, body) = reply(&svc("web"), 2, true);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(json["service"]["name"], "web");
        assert_eq!(json["localEndpoints"], 2);
        assert_eq!(
            reply(&svc("web"), 0, true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Local endpoints, but the proxier is behind: the node cannot be trusted to serve them.
        let (status, body) = reply(&svc("web"), 3, false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"serviceProxyHealthy\": false"), "{body}");
    }

    /// A free port on 127.0.0.1 (bound and released; the tests bind it again at once).
    fn free_port() -> u16 {
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("an ephemeral port")
            .port()
    }

    /// GET / on `addr`, from a blocking thread: (status line, headers and body).
    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .await
        .expect("the request thread")
    }

    fn wanted(entries: &[(&str, u16, usize)]) -> BTreeMap<ServiceRef, HealthCheck> {
        entries
            .iter()
            .map(|(n, port, local_endpoints)| {
                (
                    svc(n),
                    HealthCheck {
                        port: *port,
                        local_endpoints: *local_endpoints,
                    },
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn ports_open_answer_and_close_as_services_come_and_go() {
        let proxier = Arc::new(ProxierHealth::new(Duration::from_secs(60)));
        let mut hcs = ServiceHealthServer::new(vec![Ipv4Addr::LOCALHOST.into()], proxier.clone());
        let (p1, p2) = (free_port(), free_port());
        let r = hcs.sync(&wanted(&[("web", p1, 2), ("api", p2, 0)])).await;
        assert_eq!((r.opened, r.closed, r.open), (2, 0, 2), "{r:?}");
        let web = hcs.local_addrs(&svc("web"))[0];
        let api = hcs.local_addrs(&svc("api"))[0];

        let answer = get(web).await.expect("web answers");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let lower = answer.to_ascii_lowercase();
        for h in [
            "content-type: application/json",
            "x-content-type-options: nosniff",
            "x-load-balancing-endpoint-weight: 2",
        ] {
            assert!(lower.contains(h), "{h} missing:\n{answer}");
        }
        assert!(
            answer.ends_with("\"serviceProxyHealthy\": true\n}"),
            "{answer}"
        );
        let answer = get(api).await.expect("api answers");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"localEndpoints\": 0"), "{answer}");

        // The endpoint count follows the syncs; the proxier's health is read per request.
        hcs.sync(&wanted(&[("web", p1, 0), ("api", p2, 1)])).await;
        assert!(get(web).await.expect("web").starts_with("HTTP/1.1 503"));
        assert!(get(api).await.expect("api").starts_with("HTTP/1.1 200"));
        proxier.queued_at(std::time::SystemTime::UNIX_EPOCH);
        let answer = get(api).await.expect("api");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("\"serviceProxyHealthy\": false"),
            "{answer}"
        );
        proxier.updated();

        // A service gone closes its port; a port changed moves the listener.
        let p3 = free_port();
        let r = hcs.sync(&wanted(&[("api", p3, 1)])).await;
        assert_eq!((r.opened, r.closed, r.open), (1, 2, 1), "{r:?}");
        assert!(get(web).await.is_err(), "web's port is closed");
        assert!(get(api).await.is_err(), "api's old port is closed");
        let moved = hcs.local_addrs(&svc("api"))[0];
        assert_eq!(moved.port(), p3);
        assert!(get(moved).await.expect("api").starts_with("HTTP/1.1 200"));

        let r = hcs.sync(&BTreeMap::new()).await;
        assert_eq!((r.closed, r.open), (1, 0));
    }

    #[tokio::test]
    async fn a_port_given_up_is_taken_by_another_service_in_the_same_sync() {
        let proxier = Arc::new(ProxierHealth::new(Duration::from_secs(60)));
        let mut hcs = ServiceHealthServer::new(vec![Ipv4Addr::LOCALHOST.into()], proxier);
        let p = free_port();
        hcs.sync(&wanted(&[("old", p, 1)])).await;
        let r = hcs.sync(&wanted(&[("new", p, 1)])).await;
        assert_eq!((r.opened, r.closed, r.failed.len()), (1, 1, 0), "{r:?}");
        let answer = get(hcs.local_addrs(&svc("new"))[0]).await.expect("new");
        assert!(answer.contains("\"name\": \"new\""), "{answer}");
    }

    #[tokio::test]
    async fn a_port_held_by_another_process_is_reported_and_retried() {
        let proxier = Arc::new(ProxierHealth::new(Duration::from_secs(60)));
        let mut hcs = ServiceHealthServer::new(vec![Ipv4Addr::LOCALHOST.into()], proxier);
        let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let taken = squatter.local_addr().expect("addr").port();
        let free = free_port();
        let r = hcs
            .sync(&wanted(&[("web", taken, 1), ("api", free, 1)]))
            .await;
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert_eq!((&r.failed[0].0, r.failed[0].1), (&svc("web"), taken));
        assert_eq!((r.opened, r.open), (1, 1), "the other service is served");
        // Still taken: still failed, nothing else changes.
        let r = hcs
            .sync(&wanted(&[("web", taken, 1), ("api", free, 1)]))
            .await;
        assert_eq!((r.failed.len(), r.opened, r.closed), (1, 0, 0), "{r:?}");
        // Freed: the next sync binds it.
        drop(squatter);
        let r = hcs
            .sync(&wanted(&[("web", taken, 1), ("api", free, 1)]))
            .await;
        assert_eq!((r.failed.len(), r.opened, r.open), (0, 1, 2), "{r:?}");
        let web = hcs.local_addrs(&svc("web"))[0];
        assert!(get(web).await.expect("web").starts_with("HTTP/1.1 200"));
    }
}
