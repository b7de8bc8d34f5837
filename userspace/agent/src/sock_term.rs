//! The agent's socket terminator: after a sync in which UDP backends left their frontends, the
//! connected UDP sockets socket-LB had sent to them are destroyed (`petrel_datapath::sock_term`),
//! on a thread of its own: a run enters every network namespace of the node, which is blocking
//! work and, per namespace, a `setns` that must never happen on a tokio worker.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
};

use petrel_datapath::{
    maps::{MapsError, PinnedMaps},
    sock_term::{self, Departure, FailureKind, TermReport},
};

use crate::metrics::{KindLabel, Metrics};

/// Hands departed backends to the terminator thread; the thread stops when this is dropped.
pub struct Terminator(mpsc::Sender<BTreeSet<Departure>>);

impl Terminator {
    /// Queues a run for `gone` (runs queued while one is going are merged into the next).
    pub fn terminate(&self, gone: BTreeSet<Departure>) {
        if !gone.is_empty() {
            // The thread is gone only if it panicked; its panic was logged.
            let _ = self.0.send(gone);
        }
    }
}

/// Starts the terminator over its own handles on the pins in `maps_dir`, finding namespaces
/// through the processes under `proc`.
pub fn spawn(
    maps_dir: &Path,
    proc: PathBuf,
    metrics: Arc<Metrics>,
) -> Result<Terminator, MapsError> {
    let mut store = PinnedMaps::open(maps_dir)?;
    for kind in FailureKind::ALL {
        let _ = metrics.socket_terminate_errors.get_or_create(&label(kind));
    }
    let (tx, rx) = mpsc::channel::<BTreeSet<Departure>>();
    std::thread::Builder::new()
        .name("sock-term".into())
        .spawn(move || {
            let mut logged = BTreeSet::new();
            while let Ok(mut gone) = rx.recv() {
                while let Ok(more) = rx.try_recv() {
                    gone.extend(more);
                }
                let report = sock_term::terminate(&proc, &mut store, &gone);
                record(&metrics, &report, &mut logged);
            }
        })
        .expect("spawning the socket terminator thread");
    Ok(Terminator(tx))
}

fn label(kind: FailureKind) -> KindLabel {
    KindLabel {
        kind: kind.name().into(),
    }
}

/// Counts what a run did; each kind of failure is logged as a warning the first time it
/// happens (a node where e.g. SOCK_DESTROY is not built in would otherwise log at every sync),
/// at debug after that.
fn record(metrics: &Metrics, report: &TermReport, logged: &mut BTreeSet<FailureKind>) {
    metrics.sockets_terminated.inc_by(report.destroyed as u64);
    for (kind, error) in &report.failures {
        metrics
            .socket_terminate_errors
            .get_or_create(&label(*kind))
            .inc();
        if logged.insert(*kind) {
            tracing::warn!(kind = kind.name(), %error, "terminating UDP sockets on a removed backend failed (logged once per kind; counted in petrel_socket_terminate_errors_total)");
        } else {
            tracing::debug!(kind = kind.name(), %error, "terminating UDP sockets failed");
        }
    }
    if report.destroyed > 0 {
        tracing::info!(
            destroyed = report.destroyed,
            namespaces = report.namespaces,
            "connected UDP sockets on removed backends destroyed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use petrel_datapath::sock_term::TermError;
    use petrel_netlink::NetlinkError;

    use super::*;

    fn failure(kind: FailureKind) -> (FailureKind, TermError) {
        (
            kind,
            TermError::Netlink(NetlinkError::new(
                "destroying UDP socket",
                "x",
                io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            )),
        )
    }

    #[test]
    fn runs_are_counted_and_each_failure_kind_logged_once() {
        let m = Metrics::new();
        for kind in FailureKind::ALL {
            let _ = m.socket_terminate_errors.get_or_create(&label(kind));
        }
        let mut logged = BTreeSet::new();
        let report = TermReport {
            namespaces: 3,
            destroyed: 2,
            failures: vec![failure(FailureKind::Destroy), failure(FailureKind::Destroy)],
        };
        record(&m, &report, &mut logged);
        record(&m, &report, &mut logged);
        assert_eq!(logged, BTreeSet::from([FailureKind::Destroy]));
        let text = m.encode();
        for line in [
            "petrel_sockets_terminated_total 4",
            "petrel_socket_terminate_errors_total{kind=\"destroy\"} 4",
            "petrel_socket_terminate_errors_total{kind=\"dump\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
