//! The proxier's health, as kube-proxy defines it (pkg/proxy/healthcheck, proxier_health.go):
//! `/healthz` and `/livez` on :10256, and the `serviceProxyHealthy` of every health check node
//! port (`service_health`).
//!
//! Healthy means "the last queued update was applied in time": no change is waiting, or the
//! oldest waiting one was queued less than the timeout (twice --sync-period, as kube-proxy) ago.
//! Whether every frontend fitted in the maps is not part of it: a refused frontend is reported
//! (petrel_frontends_refused, a log line) and must not fail every node's health, which would
//! restart agents through the liveness probe and drain every node behind load balancers that
//! probe :10256. `/healthz` is also 503 while the Node is being deleted or carries the cluster
//! autoscaler's ToBeDeletedByClusterAutoscaler taint (KEP-3836), and while another CNI config
//! sorts before petrel's conflist (the node's new pods would not get petrel's network; see
//! `cni_files`); `/livez` ignores both (restarting the agent fixes neither).

use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hyper::StatusCode;
use k8s_openapi::api::core::v1::Node;

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug)]
struct State {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    node_eligible: bool,
    cni_shadowed: bool,
}

/// What the sync loop reports (`queued`, `updated`) and the HTTP handlers read.
#[derive(Debug)]
pub struct ProxierHealth {
    timeout: Duration,
    state: Mutex<State>,
}

/// One answer of /healthz or /livez.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
}

impl ProxierHealth {
    /// `timeout`: how long a queued update may wait before the proxier is unhealthy.
    pub fn new(timeout: Duration) -> ProxierHealth {
        ProxierHealth {
            timeout,
            state: Mutex::new(State {
                last_updated: None,
                oldest_pending: None,
                // Eligible while starting, until the Node says otherwise (as kube-proxy).
                node_eligible: true,
                cni_shadowed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("health state poisoned")
    }

    /// A change arrived that the datapath does not reflect yet. Only the first one since the
    /// last update starts the clock.
    pub fn queued_at(&self, now: SystemTime) {
        self.lock().oldest_pending.get_or_insert(now);
    }

    pub fn queued(&self) {
        self.queued_at(SystemTime::now());
    }

    /// A sync ran to its end: everything queued before it is applied (frontends it refused are
    /// reported elsewhere; see the module comment).
    pub fn updated_at(&self, now: SystemTime) {
        let mut s = self.lock();
        s.oldest_pending = None;
        s.last_updated = Some(now);
    }

    pub fn updated(&self) {
        self.updated_at(SystemTime::now());
    }

    /// Takes this node's Node object (None: not seen, which changes nothing).
    pub fn sync_node(&self, node: Option<&Node>) {
        if let Some(node) = node {
            self.lock().node_eligible = node_eligible(node);
        }
    }

    /// Whether another CNI config takes the node's pods (see `cni_files`).
    pub fn set_cni_shadowed(&self, shadowed: bool) {
        self.lock().cni_shadowed = shadowed;
    }

    /// The proxier's own health, without the Node's state (what health check node ports report
    /// as serviceProxyHealthy, and /livez).
    pub fn is_healthy_at(&self, now: SystemTime) -> bool {
        let s = self.lock();
        healthy(s.oldest_pending, now, self.timeout)
    }

    pub fn is_healthy(&self) -> bool {
        self.is_healthy_at(SystemTime::now())
    }

    /// /healthz: the proxier's health and the Node's eligibility.
    pub fn healthz_at(&self, now: SystemTime) -> Reply {
        let s = self.lock();
        let ok = healthy(s.oldest_pending, now, self.timeout) && s.node_eligible && !s.cni_shadowed;
        // kube-proxy reports lastUpdated as the current time while healthy (compatibility with
        // releases where it was the last run of the sync loop).
        let last = if ok { Some(now) } else { s.last_updated };
        Reply {
            status: status(ok),
            body: format!(
                "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\", \"nodeEligible\": {}{}}}",
                go_time(last),
                go_time(Some(now)),
                s.node_eligible,
                if s.cni_shadowed {
                    ", \"cniConfigShadowed\": true"
                } else {
                    ""
                }
            ),
        }
    }

    pub fn healthz(&self) -> Reply {
        self.healthz_at(SystemTime::now())
    }

    /// /livez: the proxier's health only (a node being drained must not restart the agent).
    pub fn livez_at(&self, now: SystemTime) -> Reply {
        let s = self.lock();
        let ok = healthy(s.oldest_pending, now, self.timeout);
        let last = if ok { Some(now) } else { s.last_updated };
        Reply {
            status: status(ok),
            body: format!(
                "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\"}}",
                go_time(last),
                go_time(Some(now))
            ),
        }
    }

    pub fn livez(&self) -> Reply {
        self.livez_at(SystemTime::now())
    }
}

fn healthy(oldest_pending: Option<SystemTime>, now: SystemTime, timeout: Duration) -> bool {
    match oldest_pending {
        // Nothing waiting: starting up, or fully synced.
        None => true,
        // A clock step backwards counts as no time passed.
        Some(t) => now.duration_since(t).unwrap_or_default() < timeout,
    }
}

fn status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Not being deleted and not tainted ToBeDeletedByClusterAutoscaler.
pub fn node_eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    !taints
        .into_iter()
        .flatten()
        .any(|t| t.key == TO_BE_DELETED_TAINT)
}

/// A time as Go's `time.Time.String()` writes it in UTC, which is what kube-proxy's JSON holds:
/// `2006-01-02 15:04:05.999999999 +0000 UTC` (fraction without trailing zeros, none when
/// whole), and Go's zero time for None. Go's monotonic-clock suffix (` m=+1.5`) is left out: it
/// is the process's uptime, no part of the time.
pub fn go_time(t: Option<SystemTime>) -> String {
    const ZERO: &str = "0001-01-01 00:00:00 +0000 UTC";
    let Some(t) = t else {
        return ZERO.to_string();
    };
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let Ok(ts) =
        k8s_openapi::jiff::Timestamp::new(since.as_secs() as i64, since.subsec_nanos() as i32)
    else {
        return ZERO.to_string();
    };
    let mut out = ts.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = since.subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{NodeSpec, Taint},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn healthy_while_starting_and_when_nothing_is_pending() {
        let h = ProxierHealth::new(TIMEOUT);
        assert!(h.is_healthy_at(at(0)));
        assert_eq!(h.healthz_at(at(1000)).status, StatusCode::OK);
        h.queued_at(at(0));
        h.updated_at(at(1));
        assert!(h.is_healthy_at(at(10_000)), "no update pending: healthy");
    }

    #[test]
    fn a_pending_update_is_late_after_the_timeout() {
        let h = ProxierHealth::new(TIMEOUT);
        h.updated_at(at(0));
        h.queued_at(at(10));
        // A later change does not restart the clock.
        h.queued_at(at(50));
        assert!(h.is_healthy_at(at(69)));
        assert!(!h.is_healthy_at(at(70)));
        assert_eq!(h.healthz_at(at(70)).status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.livez_at(at(70)).status, StatusCode::SERVICE_UNAVAILABLE);
        // The sync that applies it makes the proxier healthy again.
        h.updated_at(at(71));
        assert!(h.is_healthy_at(at(72)));
    }

    #[test]
    fn bodies_are_kube_proxys() {
        let h = ProxierHealth::new(TIMEOUT);
        let now = at(0) + Duration::from_millis(250);
        assert_eq!(
            h.healthz_at(now).body,
            "{\"lastUpdated\": \"2023-11-14 22:13:20.25 +0000 UTC\",\"currentTime\": \"2023-11-14 22:13:20.25 +0000 UTC\", \"nodeEligible\": true}"
        );
        // Unhealthy: lastUpdated is the last successful sync (Go's zero time if none).
        h.queued_at(at(0));
        let late = at(100);
        assert_eq!(
            h.livez_at(late).body,
            "{\"lastUpdated\": \"0001-01-01 00:00:00 +0000 UTC\",\"currentTime\": \"2023-11-14 22:15:00 +0000 UTC\"}"
        );
        h.updated_at(at(1));
        h.queued_at(at(2));
        let body = h.healthz_at(late).body;
        assert!(
            body.starts_with("{\"lastUpdated\": \"2023-11-14 22:13:21 +0000 UTC\","),
            "{body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(json["nodeEligible"], true);
    }

    fn node(deleting: bool, taints: &[&str]) -> Node {
        let mut n = Node {
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|k| Taint {
                            key: k.to_string(),
                            effect: "NoSchedule".into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        if deleting {
            n.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        n
    }

    #[test]
    fn a_node_being_deleted_or_drained_fails_healthz_but_not_livez() {
        let h = ProxierHealth::new(TIMEOUT);
        h.sync_node(Some(&node(false, &["node.kubernetes.io/unschedulable"])));
        assert_eq!(h.healthz_at(at(0)).status, StatusCode::OK);
        h.sync_node(Some(&node(false, &[TO_BE_DELETED_TAINT])));
        let r = h.healthz_at(at(0));
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.body.ends_with("\"nodeEligible\": false}"), "{}", r.body);
        assert_eq!(h.livez_at(at(0)).status, StatusCode::OK);
        assert!(h.is_healthy_at(at(0)), "the proxier itself is healthy");
        // An unseen Node changes nothing; the taint removed makes the node eligible again.
        h.sync_node(None);
        assert_eq!(h.healthz_at(at(0)).status, StatusCode::SERVICE_UNAVAILABLE);
        h.sync_node(Some(&node(false, &[])));
        assert_eq!(h.healthz_at(at(0)).status, StatusCode::OK);
        h.sync_node(Some(&node(true, &[])));
        assert_eq!(h.healthz_at(at(0)).status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn go_time_formats_as_go_does() {
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(Some(UNIX_EPOCH)), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            go_time(Some(
                UNIX_EPOCH + Duration::new(86_400 + 3_661, 120_000_000)
            )),
            "1970-01-02 01:01:01.12 +0000 UTC"
        );
        assert_eq!(
            go_time(Some(UNIX_EPOCH + Duration::new(0, 1))),
            "1970-01-01 00:00:00.000000001 +0000 UTC"
        );
    }
}
