//! Keeps this node's routes to other nodes' pods in line with the Node objects: makes the
//! `Router` once the node address is known (again when it changes), attaches the external-side
//! program to the uplink and the overlay device (replies of translated flows come back there),
//! applies each new plan, and re-checks the kernel's routes every sync period. Failures are
//! logged, counted and retried at the next sync.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use petrel_datapath::Datapath;

use super::{
    kernel::{self as routes, Router},
    plan::{Plan, RemoteNode},
};
use crate::metrics::Metrics;

/// How long to wait before trying again to set up routing after a failure.
const RETRY: Duration = Duration::from_secs(5);

/// How this node routes, from the agent's configuration.
pub struct Settings {
    /// None: petrel does not route between nodes (another component does).
    pub mode: Option<routes::Mode>,
    /// The pods' MTU when set explicitly.
    pub pod_mtu: Option<u32>,
    /// Where the host's /proc/sys/net is.
    pub proc_sys_net: PathBuf,
    /// How often the kernel's routes are re-checked.
    pub sync_period: Duration,
    /// Interfaces already attached as external ones.
    pub external_interfaces: Vec<String>,
}

/// Route reconciliation state: the router and what was last applied.
#[derive(Default)]
pub struct RouteSync {
    router: Option<Router>,
    /// The last failure to set up routing and when: logged once, retried every RETRY.
    failure: Option<(String, Instant)>,
    applied: Option<Vec<RemoteNode>>,
    last_check: Option<Instant>,
    problems: Vec<String>,
}

impl RouteSync {
    /// When routing failed to be set up: how long until its retry is due (the sync loop then
    /// syncs without waiting for a watch event).
    pub fn retry_in(&self) -> Option<Duration> {
        self.failure
            .as_ref()
            .map(|(_, at)| RETRY.saturating_sub(at.elapsed()))
    }

    /// The pods' MTU, once known: the setting, else what the uplink and the mode allow (1500
    /// when petrel does not route).
    pub fn pod_mtu(&self, s: &Settings) -> Option<u32> {
        match (s.pod_mtu, &self.router, s.mode) {
            (Some(m), _, _) => Some(m),
            (None, Some(r), _) => Some(r.pod_mtu()),
            (None, None, None) => Some(1500),
            // Routing could not be set up (logged): pods on this node are wired anyway, with
            // the usual MTU for the mode.
            (None, None, Some(routes::Mode::Native)) if self.failure.is_some() => Some(1500),
            (None, None, Some(routes::Mode::Vxlan { .. })) if self.failure.is_some() => {
                Some(1500 - routes::VXLAN_OVERHEAD)
            }
            (None, None, Some(_)) => None,
        }
    }

    /// Applies `plan` when it changed, and re-checks the kernel's routes every --sync-period
    /// (someone may have deleted one). Failures are logged and retried on the next sync.
    pub async fn sync(
        &mut self,
        s: &Settings,
        node_ip: Ipv4Addr,
        plan: Plan,
        dp: &mut Datapath,
        metrics: &Metrics,
    ) {
        let Some(mode) = s.mode else { return };
        if plan.problems != self.problems {
            for p in &plan.problems {
                tracing::warn!("{p}");
            }
            self.problems = plan.problems;
        }
        if !self.ensure_router(s, mode, node_ip, dp, metrics).await {
            return;
        }
        let due = self.last_check.is_none_or(|t| t.elapsed() >= s.sync_period);
        if !due && self.applied.as_ref() == Some(&plan.remotes) {
            return;
        }
        // A few netlink requests, but blocking ones: off the runtime's threads. The router
        // goes with them and comes back.
        let mut router = self.router.take().expect("made above");
        let remotes = plan.remotes.clone();
        let applied = match tokio::task::spawn_blocking(move || {
            let a = router.apply(&remotes);
            (router, a)
        })
        .await
        {
            Ok((router, a)) => {
                self.router = Some(router);
                a
            }
            Err(e) => {
                // The router is lost with the task: the next sync makes a new one.
                tracing::error!(error = %e, "applying routes to other nodes panicked");
                metrics.sync_errors.inc();
                return;
            }
        };
        match applied {
            Ok(a) => {
                for e in &a.errors {
                    tracing::error!("{e}");
                }
                if a.added + a.removed > 0 {
                    tracing::info!(
                        added = a.added,
                        removed = a.removed,
                        nodes = plan.remotes.len(),
                        "routes to other nodes updated"
                    );
                }
                metrics.node_routes.set(plan.remotes.len() as i64);
                if !a.errors.is_empty() {
                    metrics.sync_errors.inc();
                }
                // Entries that failed are tried again at the periodic re-check (or sooner if
                // the plan changes), not at every sync.
                self.applied = Some(plan.remotes);
                self.last_check = Some(Instant::now());
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot apply routes to other nodes");
                metrics.sync_errors.inc();
            }
        }
    }

    /// Makes the `Router` when there is none or the node address changed, attaching the
    /// external-side program to its interfaces. False while routing cannot be set up (the
    /// failure is logged once and retried every RETRY).
    async fn ensure_router(
        &mut self,
        s: &Settings,
        mode: routes::Mode,
        node_ip: Ipv4Addr,
        dp: &mut Datapath,
        metrics: &Metrics,
    ) -> bool {
        if self.router.as_ref().is_some_and(|r| r.node_ip() == node_ip) {
            return true;
        }
        if self
            .failure
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < RETRY)
        {
            return false;
        }
        let proc_sys_net = s.proc_sys_net.clone();
        let made =
            tokio::task::spawn_blocking(move || Router::new(mode, node_ip, &proc_sys_net)).await;
        let made = match made {
            Ok(made) => made,
            Err(e) => {
                tracing::error!(error = %e, "setting up routing to other nodes panicked");
                self.failure = Some((e.to_string(), Instant::now()));
                metrics.sync_errors.inc();
                return false;
            }
        };
        match made {
            Ok(r) => {
                tracing::info!(mode = ?r.mode(), uplink = %r.uplink().name, pod_mtu = r.pod_mtu(), "routing to other nodes' pods");
                // Replies of flows this node translated come back on the uplink (native) or
                // out of the overlay device: both need the external-side program.
                let mut ifaces = vec![r.uplink().name.clone()];
                if matches!(mode, routes::Mode::Vxlan { .. }) {
                    ifaces.push(routes::VXLAN_IFNAME.to_string());
                }
                for iface in ifaces {
                    // Once per new router; attaching again would only swap the program.
                    if s.external_interfaces.contains(&iface) {
                        continue;
                    }
                    match dp.attach_external(&iface) {
                        Ok(how) => {
                            tracing::info!(%iface, ?how, "node interface attached");
                        }
                        Err(e) => {
                            tracing::warn!(%iface, error = %e, "attaching to node interface failed")
                        }
                    }
                }
                self.router = Some(r);
                self.applied = None;
                if self.failure.take().is_some() {
                    tracing::info!("routing to other nodes set up after earlier failures");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if self.failure.as_ref().map(|(m, _)| m) != Some(&msg) {
                    tracing::error!(error = %msg, retry_in_s = RETRY.as_secs(), "cannot set up routing to other nodes");
                }
                self.failure = Some((msg, Instant::now()));
                metrics.sync_errors.inc();
                return false;
            }
        }
        true
    }
}
