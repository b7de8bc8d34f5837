//! Terminating connected UDP sockets that socket-LB sent to a backend which has since left its
//! service, as Cilium's bpf_sock_term does, but from userspace through sock_diag (`ss -K`).
//!
//! A connect() of a UDP socket to a frontend is rewritten once, to a backend (sock.rs), and the
//! socket keeps sending there: no later packet passes a socket-LB hook. When that backend goes,
//! the socket is destroyed (SOCK_DESTROY); the application's next send or receive fails with
//! ECONNABORTED and, reconnecting, gets a current backend.
//!
//! Which sockets (`doomed`, pure): a connected IPv4 UDP socket whose destination is a departed
//! backend AND whose (cookie, destination) is in SOCK_REVNAT naming the frontend the backend
//! left. So only sockets socket-LB translated through that frontend are touched: one a pod
//! connected to the backend's own address, or one translated through another frontend the
//! backend still serves, is left alone.
//!
//! Where (`terminate`): in every network namespace of the node (the host's and each pod's),
//! found through `/proc/<pid>/ns/net` of every process; each is entered on a short-lived thread.

use std::{collections::BTreeSet, net::SocketAddrV4, path::Path};

use petrel_common::SockKey;
use petrel_netlink::{DiagSocket, NetlinkError, Netns, UdpSock};

use crate::maps::{MapStore, MapsError, codec};

/// A backend that stopped serving a UDP frontend (it left the frontend's backends, or the
/// frontend went).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Departure {
    pub frontend: SocketAddrV4,
    pub backend: SocketAddrV4,
}

/// A socket to destroy and the SOCK_REVNAT entry that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doomed {
    pub sock: UdpSock,
    pub key: SockKey,
}

fn sock_key(cookie: u64, backend: SocketAddrV4) -> SockKey {
    SockKey {
        cookie,
        addr_be: codec::addr_be(*backend.ip()),
        port_be: backend.port().to_be(),
        _pad: [0; 2],
    }
}

/// The sockets of `dump` (one namespace's connected UDP sockets) to destroy for `gone`.
pub fn doomed<S: MapStore>(
    dump: &[UdpSock],
    gone: &BTreeSet<Departure>,
    store: &S,
) -> Result<Vec<Doomed>, MapsError> {
    let backends: BTreeSet<SocketAddrV4> = gone.iter().map(|d| d.backend).collect();
    let mut out = Vec::new();
    for s in dump.iter().filter(|s| backends.contains(&s.dst)) {
        let key = sock_key(s.cookie, s.dst);
        let Some(v) = store.sock_revnat_get(&key)? else {
            continue;
        };
        let departure = Departure {
            frontend: codec::socket(v.addr_be, v.port_be),
            backend: s.dst,
        };
        if gone.contains(&departure) {
            out.push(Doomed { sock: *s, key });
        }
    }
    Ok(out)
}

/// What failed, for metrics and for logging each kind once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// Listing the namespaces (reading /proc).
    Namespaces,
    /// Entering a namespace or opening a sock_diag socket there.
    Enter,
    Dump,
    Destroy,
    /// Reading or removing a SOCK_REVNAT entry.
    Map,
}

impl FailureKind {
    pub const ALL: [FailureKind; 5] = [
        FailureKind::Namespaces,
        FailureKind::Enter,
        FailureKind::Dump,
        FailureKind::Destroy,
        FailureKind::Map,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Namespaces => "namespaces",
            FailureKind::Enter => "enter",
            FailureKind::Dump => "dump",
            FailureKind::Destroy => "destroy",
            FailureKind::Map => "map",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TermError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Map(#[from] MapsError),
}

/// What one run did. Failures in one namespace do not stop the others.
#[derive(Debug, Default)]
pub struct TermReport {
    pub namespaces: usize,
    pub destroyed: usize,
    pub failures: Vec<(FailureKind, TermError)>,
}

/// Destroys, in every network namespace that a process under `proc` is in, the connected UDP
/// sockets that socket-LB sent to a backend in `gone`, and removes their SOCK_REVNAT entries.
///
/// WARNING: blocking (a thread per namespace, a dump each): never on an async worker.
pub fn terminate<S: MapStore>(
    proc: &Path,
    store: &mut S,
    gone: &BTreeSet<Departure>,
) -> TermReport {
    let mut report = TermReport::default();
    if gone.is_empty() {
        return report;
    }
    let namespaces = match Netns::of_processes(proc) {
        Ok(n) => n,
        Err(e) => {
            report.failures.push((FailureKind::Namespaces, e.into()));
            return report;
        }
    };
    for ns in namespaces {
        report.namespaces += 1;
        let mut diag = match ns.enter(DiagSocket::new) {
            Ok(d) => d,
            Err(e) => {
                report.failures.push((FailureKind::Enter, e.into()));
                continue;
            }
        };
        terminate_in(&mut diag, store, gone, &mut report);
    }
    report
}

/// The same in the namespace `diag` was opened in.
pub fn terminate_in<S: MapStore>(
    diag: &mut DiagSocket,
    store: &mut S,
    gone: &BTreeSet<Departure>,
    report: &mut TermReport,
) {
    let dump = match diag.udp4_connected() {
        Ok(d) => d,
        Err(e) => {
            report.failures.push((FailureKind::Dump, e.into()));
            return;
        }
    };
    let doomed = match doomed(&dump, gone, store) {
        Ok(d) => d,
        Err(e) => {
            report.failures.push((FailureKind::Map, e.into()));
            return;
        }
    };
    for d in doomed {
        match diag.destroy_udp4(&d.sock) {
            Ok(()) => report.destroyed += 1,
            // Closed since the dump: nothing to destroy, its entry goes all the same.
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            Err(e) => {
                report.failures.push((FailureKind::Destroy, e.into()));
                continue;
            }
        }
        if let Err(e) = store.sock_revnat_del(&d.key) {
            report.failures.push((FailureKind::Map, e.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use petrel_common::SockValue;

    use super::*;
    use crate::maps::FakeMaps;

    const VIP: &str = "10.96.0.10:53";
    const OTHER_VIP: &str = "10.96.0.20:53";
    const A: &str = "10.244.1.5:5353";
    const B: &str = "10.244.1.6:5353";

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().expect("socket address")
    }

    fn sock(cookie: u64, dst: &str) -> UdpSock {
        UdpSock {
            src: sa("10.244.2.9:40000"),
            dst: sa(dst),
            iface: 0,
            cookie,
        }
    }

    /// socket-LB translated socket `cookie` from `frontend` to `backend`.
    fn translated(m: &mut FakeMaps, cookie: u64, frontend: &str, backend: &str) {
        let fe = sa(frontend);
        m.sock_revnat.insert(
            sock_key(cookie, sa(backend)),
            SockValue {
                addr_be: codec::addr_be(*fe.ip()),
                port_be: fe.port().to_be(),
                _pad: [0; 2],
                backend_id: 7,
            },
        );
    }

    fn gone(pairs: &[(&str, &str)]) -> BTreeSet<Departure> {
        pairs
            .iter()
            .map(|(f, b)| Departure {
                frontend: sa(f),
                backend: sa(b),
            })
            .collect()
    }

    fn cookies(d: &[Doomed]) -> Vec<u64> {
        d.iter().map(|d| d.sock.cookie).collect()
    }

    #[test]
    fn only_sockets_socket_lb_sent_to_the_departed_backend_through_that_frontend() {
        let mut m = FakeMaps::new();
        translated(&mut m, 1, VIP, A); // through the VIP to A: destroyed
        translated(&mut m, 3, VIP, B); // through the VIP to B, which stays
        translated(&mut m, 4, OTHER_VIP, A); // through a frontend A still serves
        let dump = [
            sock(1, A),
            sock(2, A), // connected to A's address directly: not in SOCK_REVNAT
            sock(3, B),
            sock(4, A),
        ];
        let d = doomed(&dump, &gone(&[(VIP, A)]), &m).expect("doomed");
        assert_eq!(cookies(&d), [1]);
        assert_eq!(d[0].key, sock_key(1, sa(A)));
    }

    #[test]
    fn an_entry_for_another_backend_of_the_same_socket_does_not_count() {
        // The socket was translated to B once (entry left behind in the LRU map) and is now
        // connected to A directly.
        let mut m = FakeMaps::new();
        translated(&mut m, 1, VIP, B);
        let d = doomed(&[sock(1, A)], &gone(&[(VIP, A), (VIP, B)]), &m).expect("doomed");
        assert!(d.is_empty());
    }

    #[test]
    fn every_frontend_the_backend_left_is_matched() {
        let mut m = FakeMaps::new();
        translated(&mut m, 1, VIP, A);
        translated(&mut m, 2, OTHER_VIP, A);
        let d = doomed(
            &[sock(1, A), sock(2, A)],
            &gone(&[(VIP, A), (OTHER_VIP, A)]),
            &m,
        )
        .expect("doomed");
        assert_eq!(cookies(&d), [1, 2]);
    }

    #[test]
    fn nothing_gone_nothing_doomed_and_no_namespace_entered() {
        let mut m = FakeMaps::new();
        translated(&mut m, 1, VIP, A);
        assert!(
            doomed(&[sock(1, A)], &BTreeSet::new(), &m)
                .unwrap()
                .is_empty()
        );
        let r = terminate(Path::new("/nonexistent"), &mut m, &BTreeSet::new());
        assert_eq!((r.namespaces, r.destroyed, r.failures.len()), (0, 0, 0));
    }

    #[test]
    fn an_unreadable_proc_is_one_failure() {
        let mut m = FakeMaps::new();
        let r = terminate(Path::new("/nonexistent"), &mut m, &gone(&[(VIP, A)]));
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.failures[0].0, FailureKind::Namespaces);
    }
}
