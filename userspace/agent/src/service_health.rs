//! Health check node ports, as kube-proxy serves them (pkg/proxy/healthcheck,
//! service_health.go): for every LoadBalancer service with externalTrafficPolicy Local, an HTTP
//! server on its `spec.healthCheckNodePort` that answers 200 while this node has a ready endpoint
//! of the service (and the proxier is healthy), else 503, so a load balancer sends only to nodes
//! that can serve the traffic without leaving the node.
//!
//! Listeners open and close as services come and go (and move when the port changes). They
//! listen where kube-proxy's do (newServiceHealthServer): on 0.0.0.0 when
//! `--nodeport-addresses` matches every address, else on each NodePort address; unlike
//! kube-proxy, which reads them once at start, they follow the addresses at every sync (an
//! address added gets a listener, one removed loses it, the others stay open). A port that
//! cannot be bound (another process holds it) is logged, counted and tried again at every
//! sync; it never fails the sync or the agent's health.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use tokio::task::{JoinHandle, JoinSet};

use crate::{
    desired::{HealthCheck, ServiceRef},
    health::ProxierHealth,
    nodeport::NodePortAddresses,
};

/// Local ready endpoints per service, shared with the HTTP handlers.
type Counts = Arc<RwLock<BTreeMap<ServiceRef, usize>>>;

/// Where health check node ports listen, as kube-proxy decides: 0.0.0.0 when
/// `--nodeport-addresses` matches every local address, else the addresses NodePorts are served
/// on (`node_port_ips`, out of `NodePortAddresses::select`), which may be none.
pub fn listen_addrs(nodeport: &NodePortAddresses, node_port_ips: &[Ipv4Addr]) -> Vec<IpAddr> {
    if nodeport.match_all() {
        return vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
    }
    let mut out: Vec<IpAddr> = node_port_ips.iter().map(|ip| (*ip).into()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// One address's listener. Dropping it closes it, and the connections it accepted.
struct Listener {
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl Listener {
    /// Closes the listener and waits until its socket is gone, so the port can be bound again
    /// at once (by another service that now has it, or on 0.0.0.0 in the same sync).
    async fn close(mut self) {
        self.task.abort();
        // A cancelled task's future (which owns the listener) is dropped before its handle
        // resolves.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One service's listeners, one per address.
struct Instance {
    port: u16,
    listeners: BTreeMap<IpAddr, Listener>,
}

impl Instance {
    async fn close(mut self) {
        for (_, l) in std::mem::take(&mut self.listeners) {
            l.close().await;
        }
    }
}

/// What one `sync` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthSyncReport {
    pub opened: usize,
    pub closed: usize,
    /// Services already served whose listeners followed a change of the addresses.
    pub moved: usize,
    /// Services not served on every address (another process holds the port, or no address
    /// matches `--nodeport-addresses`), with the port and why.
    pub failed: Vec<(ServiceRef, u16, String)>,
    /// Services served after the sync (on one address at least).
    pub open: usize,
}

pub struct ServiceHealthServer {
    /// Where every health check port listens (`listen_addrs`).
    addrs: Vec<IpAddr>,
    proxier: Arc<ProxierHealth>,
    counts: Counts,
    open: BTreeMap<ServiceRef, Instance>,
    /// Services not fully served at the last sync: a failure is logged as a warning once per
    /// port, then at debug level while it lasts.
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

    /// Sets where the ports listen from the next `sync` on (`listen_addrs`'s answer).
    pub fn set_addrs(&mut self, addrs: Vec<IpAddr>) {
        if addrs != self.addrs {
            tracing::info!(from = ?self.addrs, to = ?addrs, "health check node ports follow the NodePort addresses");
            if addrs.is_empty() {
                tracing::warn!(
                    "no local address matches --nodeport-addresses: health check node ports are served nowhere"
                );
            }
            self.addrs = addrs;
        }
    }

    /// Serves exactly the services in `wanted`, with their local endpoint counts, on the
    /// current addresses: closes first, then opens (a port one service gave up can be
    /// another's in the same sync, and 0.0.0.0 can replace the addresses it covers).
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
        // Addresses no longer wanted, on every service, before any bind.
        let mut moved = std::collections::BTreeSet::new();
        for (svc, inst) in &mut self.open {
            let stale: Vec<IpAddr> = inst
                .listeners
                .keys()
                .filter(|ip| !self.addrs.contains(ip))
                .copied()
                .collect();
            for ip in stale {
                if let Some(l) = inst.listeners.remove(&ip) {
                    l.close().await;
                    moved.insert(svc.clone());
                }
            }
        }
        self.failed.retain(|svc, _| wanted.contains_key(svc));
        for (svc, hc) in wanted {
            let was_open = self.open.contains_key(svc);
            let inst = self.open.entry(svc.clone()).or_insert_with(|| Instance {
                port: hc.port,
                listeners: BTreeMap::new(),
            });
            let mut error = self
                .addrs
                .is_empty()
                .then(|| "no local address matches --nodeport-addresses".to_string());
            let mut added = false;
            for ip in &self.addrs {
                if inst.listeners.contains_key(ip) {
                    continue;
                }
                match bind(*ip, hc.port, svc, &self.counts, &self.proxier) {
                    Ok(l) => {
                        inst.listeners.insert(*ip, l);
                        added = true;
                    }
                    Err(e) => {
                        error.get_or_insert(format!("{ip}: {e}"));
                    }
                }
            }
            let addrs: Vec<SocketAddr> = inst.listeners.values().map(|l| l.local).collect();
            if addrs.is_empty() {
                self.open.remove(svc);
                moved.remove(svc);
            } else if !was_open {
                tracing::info!(service = %svc, port = hc.port, ?addrs, "serving health check node port");
                report.opened += 1;
            } else if added || moved.contains(svc) {
                tracing::info!(service = %svc, port = hc.port, ?addrs, "health check node port moved with the NodePort addresses");
                moved.insert(svc.clone());
            }
            match error {
                None => {
                    self.failed.remove(svc);
                }
                Some(e) => {
                    if self.failed.insert(svc.clone(), hc.port) != Some(hc.port) {
                        tracing::warn!(service = %svc, port = hc.port, error = %e, served_on = ?addrs, "cannot serve the health check node port on every address: load balancers probing the others see this node as down for the service; retried at every sync");
                    } else {
                        tracing::debug!(service = %svc, port = hc.port, error = %e, "health check node port still not served on every address");
                    }
                    report.failed.push((svc.clone(), hc.port, e));
                }
            }
        }
        report.moved = moved.len();
        report.open = self.open.len();
        report
    }

    /// The addresses a service's health check listens on (empty when not served).
    pub fn local_addrs(&self, svc: &ServiceRef) -> Vec<SocketAddr> {
        self.open
            .get(svc)
            .map(|i| i.listeners.values().map(|l| l.local).collect())
            .unwrap_or_default()
    }
}

/// Binds `port` on `ip` and serves `svc`'s health there.
fn bind(
    ip: IpAddr,
    port: u16,
    svc: &ServiceRef,
    counts: &Counts,
    proxier: &Arc<ProxierHealth>,
) -> std::io::Result<Listener> {
    // std sets SO_REUSEADDR, as Go's net.Listen does: a port closed a moment ago (its
    // connections in TIME_WAIT) can be bound again at once.
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
    l.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(l)?;
    let local = l.local_addr()?;
    let (svc, counts, proxier) = (svc.clone(), counts.clone(), proxier.clone());
    Ok(Listener {
        local,
        task: tokio::spawn(accept_loop(l, svc, counts, proxier)),
    })
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

    #[test]
    fn listen_addrs_are_kube_proxys_choice() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(192, 168, 1, 5));
        // Every address: 0.0.0.0, whatever the NodePort addresses are.
        assert_eq!(
            listen_addrs(&NodePortAddresses::All, &[a, b]),
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        );
        // Narrowed (CIDRs or primary): exactly the NodePort addresses, sorted, once each.
        let cidrs = NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().expect("cidr")]);
        assert_eq!(
            listen_addrs(&cidrs, &[b, a, b]),
            vec![IpAddr::from(a), IpAddr::from(b)]
        );
        assert_eq!(
            listen_addrs(&NodePortAddresses::Primary, &[a]),
            vec![IpAddr::from(a)]
        );
        // Nothing matches: nowhere (kube-proxy listens on none of them either), never 0.0.0.0.
        assert!(listen_addrs(&cidrs, &[]).is_empty());
    }

    fn v4(last: u8) -> IpAddr {
        Ipv4Addr::new(127, 0, 0, last).into()
    }

    #[tokio::test]
    async fn listeners_follow_the_addresses_and_keep_the_others_open() {
        let proxier = Arc::new(ProxierHealth::new(Duration::from_secs(60)));
        let mut hcs = ServiceHealthServer::new(vec![v4(1)], proxier);
        let p = free_port();
        let on = |last| SocketAddr::new(v4(last), p);
        let r = hcs.sync(&wanted(&[("web", p, 1)])).await;
        assert_eq!((r.opened, r.moved, r.open), (1, 0, 1), "{r:?}");
        assert!(get(on(2)).await.is_err(), "not yet on 127.0.0.2");

        // An address added: a listener there, the first one kept (a connection to it lives).
        let mut kept = std::net::TcpStream::connect(on(1)).expect("connect");
        hcs.set_addrs(vec![v4(1), v4(2)]);
        let r = hcs.sync(&wanted(&[("web", p, 1)])).await;
        assert_eq!((r.opened, r.closed, r.moved, r.open), (0, 0, 1, 1), "{r:?}");
        assert_eq!(hcs.local_addrs(&svc("web")), vec![on(1), on(2)]);
        for last in [1, 2] {
            assert!(
                get(on(last))
                    .await
                    .expect("answers")
                    .starts_with("HTTP/1.1 200")
            );
        }
        // Read on a blocking thread: the listeners run on this test's one runtime thread.
        let answer = tokio::task::spawn_blocking(move || {
            kept.set_read_timeout(Some(Duration::from_secs(5)))?;
            kept.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            kept.read_to_string(&mut answer)?;
            Ok::<_, std::io::Error>(answer)
        })
        .await
        .expect("the request thread")
        .expect("the kept connection answers");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // An address removed: its listener closes, the other stays.
        hcs.set_addrs(vec![v4(2)]);
        let r = hcs.sync(&wanted(&[("web", p, 1)])).await;
        assert_eq!((r.moved, r.open), (1, 1), "{r:?}");
        assert!(get(on(1)).await.is_err(), "127.0.0.1 is closed");
        assert!(
            get(on(2))
                .await
                .expect("answers")
                .starts_with("HTTP/1.1 200")
        );

        // No address at all: not served, reported; back to every address: 0.0.0.0.
        hcs.set_addrs(Vec::new());
        let r = hcs.sync(&wanted(&[("web", p, 1)])).await;
        assert_eq!((r.open, r.failed.len()), (0, 1), "{r:?}");
        assert!(r.failed[0].2.contains("--nodeport-addresses"), "{r:?}");
        assert!(get(on(2)).await.is_err());
        hcs.set_addrs(vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        let r = hcs.sync(&wanted(&[("web", p, 1)])).await;
        assert_eq!((r.opened, r.open, r.failed.len()), (1, 1, 0), "{r:?}");
        for last in [1, 3] {
            assert!(
                get(on(last))
                    .await
                    .expect("answers")
                    .starts_with("HTTP/1.1 200")
            );
        }
        // And from 0.0.0.0 to one address: the wildcard goes first, so the address binds.
        hcs.set_addrs(vec![v4(3)]);
        let r = hcs.sync(&wanted(&[("web", p, 1)])).await;
        assert_eq!((r.moved, r.failed.len()), (1, 0), "{r:?}");
        assert_eq!(hcs.local_addrs(&svc("web")), vec![on(3)]);
        assert!(get(on(1)).await.is_err());
    }

    #[tokio::test]
    async fn a_port_held_on_one_address_is_served_on_the_others_and_retried() {
        let proxier = Arc::new(ProxierHealth::new(Duration::from_secs(60)));
        let mut hcs = ServiceHealthServer::new(vec![v4(1), v4(2)], proxier);
        let squatter = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).expect("bind");
        let p = squatter.local_addr().expect("addr").port();
        let r = hcs.sync(&wanted(&[("web", p, 1)])).await;
        assert_eq!((r.opened, r.open, r.failed.len()), (1, 1, 1), "{r:?}");
        assert!(r.failed[0].2.starts_with("127.0.0.2:"), "{r:?}");
        assert_eq!(
            hcs.local_addrs(&svc("web")),
            vec![SocketAddr::new(v4(1), p)]
        );
        drop(squatter);
        let r = hcs.sync(&wanted(&[("web", p, 1)])).await;
        assert_eq!((r.opened, r.moved, r.failed.len()), (0, 1, 0), "{r:?}");
        let answer = get(SocketAddr::new(v4(2), p)).await.expect("answers");
        assert!(answer.contains("\"name\": \"web\""), "{answer}");
    }
}
