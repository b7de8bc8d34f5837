//! A test pod's workload: a TCP and UDP server that answers every request with its name and the
//! address it saw the client come from, and the matching clients.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// How long clients wait for a connection or an answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// What a server answered (its name and the client address it saw), and the peer address the
/// client's socket reported (getpeername / recvfrom: the VIP, whatever translated the flow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub server: String,
    pub client_seen: String,
    pub peer: String,
}

impl Reply {
    fn from_answer(s: &str, peer: SocketAddr) -> Option<Reply> {
        let mut it = s.split_whitespace();
        Some(Reply {
            server: it.next()?.to_string(),
            client_seen: it.next()?.to_string(),
            peer: peer.to_string(),
        })
    }

    /// Parses `petrel-pod get` output: "SERVER CLIENT_SEEN PEER".
    pub fn parse(s: &str) -> Option<Reply> {
        let mut it = s.split_whitespace();
        Some(Reply {
            server: it.next()?.to_string(),
            client_seen: it.next()?.to_string(),
            peer: it.next()?.to_string(),
        })
    }
}

fn answer(name: &str, peer: SocketAddr) -> String {
    format!("{name} {}\n", peer.ip())
}

/// Serves TCP and UDP on `addr` from inside the namespace at `netns` (None: the caller's
/// namespace), answering "NAME CLIENT_IP". Stops and closes its sockets on drop, so the namespace
/// can go away.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn start(netns: Option<PathBuf>, name: &str, addr: SocketAddrV4) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for udp in [false, true] {
            let (stop, name, netns, ready) = (
                stop.clone(),
                name.to_string(),
                netns.clone(),
                ready_tx.clone(),
            );
            threads.push(thread::spawn(move || {
                if let Some(ns) = netns {
                    crate::netns::enter(&ns);
                }
                if udp {
                    serve_udp(&stop, &name, addr, ready)
                } else {
                    serve_tcp(&stop, &name, addr, ready)
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(TIMEOUT)
                .expect("server thread did not start")
                .unwrap_or_else(|e| panic!("server {name} on {addr}: {e}"));
        }
        Server { stop, threads }
    }
}

type Ready = std::sync::mpsc::Sender<Result<(), String>>;

fn serve_tcp(stop: &AtomicBool, name: &str, addr: SocketAddrV4, ready: Ready) {
    let listener = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
        Ok(l) => l,
        Err(e) => return drop(ready.send(Err(format!("tcp bind: {e}")))),
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let mut buf = [0u8; 64];
                // One request (any bytes), one answer, close.
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer(name, peer).as_bytes());
            }
            // Wait for the next connection without spinning, waking up now and then to see
            // whether the server should stop.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(&listener, 50),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_udp(stop: &AtomicBool, name: &str, addr: SocketAddrV4, ready: Ready) {
    let sock = match UdpSocket::bind(addr).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .map(|()| s)
    }) {
        Ok(s) => s,
        Err(e) => return drop(ready.send(Err(format!("udp bind: {e}")))),
    };
    let _ = ready.send(Ok(()));
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(answer(name, peer).as_bytes(), peer);
        }
    }
}

fn wait_readable(fd: &impl std::os::fd::AsRawFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP request to `addr` from the calling thread's namespace.
pub fn tcp_get(addr: SocketAddrV4) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr.into(), TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(b"hi\n")?;
    let peer = s.peer_addr()?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Reply::from_answer(&out, peer)
        .ok_or_else(|| std::io::Error::other(format!("bad answer {out:?}")))
}

/// `addr` as an AF_INET6 socket gives it: IPv4-mapped (`[::ffff:10.96.0.10]:80`).
pub fn v4_mapped(addr: SocketAddrV4) -> SocketAddr {
    SocketAddr::V6(std::net::SocketAddrV6::new(
        addr.ip().to_ipv6_mapped(),
        addr.port(),
        0,
        0,
    ))
}

/// `tcp_get` from an AF_INET6 socket to the IPv4-mapped `addr` (as many JVMs and dual-stack
/// programs connect to IPv4 services).
pub fn tcp6_get(addr: SocketAddrV4) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&v4_mapped(addr), TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(b"hi\n")?;
    let peer = s.peer_addr()?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Reply::from_answer(&out, peer)
        .ok_or_else(|| std::io::Error::other(format!("bad answer {out:?}")))
}

/// `udp_get` from an unconnected AF_INET6 socket to the IPv4-mapped `addr`; the answer must come
/// from that same mapped address.
pub fn udp6_get(addr: SocketAddrV4) -> std::io::Result<Reply> {
    let s = UdpSocket::bind("[::]:0")?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let to = v4_mapped(addr);
    s.send_to(b"hi\n", to)?;
    let mut buf = [0u8; 128];
    let (n, from) = s.recv_from(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    if from != to {
        return Err(std::io::Error::other(format!(
            "answer came from {from}, not {to}"
        )));
    }
    Reply::from_answer(&text, from)
        .ok_or_else(|| std::io::Error::other(format!("bad answer {text:?}")))
}

/// One UDP request to `addr` from an unconnected socket (so socket-LB cannot translate it at
/// connect time and the TC path must).
pub fn udp_get(addr: SocketAddrV4) -> std::io::Result<Reply> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    udp_exchange(&s, addr)
}

/// One UDP request/answer on `s` (unconnected) to `addr`; the answer must come from `addr`.
pub fn udp_exchange(s: &UdpSocket, addr: SocketAddrV4) -> std::io::Result<Reply> {
    s.set_read_timeout(Some(TIMEOUT))?;
    s.send_to(b"hi\n", addr)?;
    let mut buf = [0u8; 128];
    let (n, from) = s.recv_from(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    if from != SocketAddr::V4(addr) {
        return Err(std::io::Error::other(format!(
            "answer came from {from}, not {addr}"
        )));
    }
    Reply::from_answer(&text, from)
        .ok_or_else(|| std::io::Error::other(format!("bad answer {text:?}")))
}

/// One UDP request/answer on a connected socket `s` (errors such as ECONNREFUSED from an ICMP
/// port unreachable are reported on connected sockets only).
pub fn udp_connected_exchange(s: &UdpSocket) -> std::io::Result<Reply> {
    s.set_read_timeout(Some(TIMEOUT))?;
    s.send(b"hi\n")?;
    let mut buf = [0u8; 128];
    let n = s.recv(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    Reply::from_answer(&text, s.peer_addr()?)
        .ok_or_else(|| std::io::Error::other(format!("bad answer {text:?}")))
}

/// Runs the `petrel-pod` client binary as a separate process inside `netns` and inside the cgroup
/// v2 folder `cgroup` (a cgroup holds processes, not threads, so socket-LB tests need one).
/// Returns the reply or the client's error text.
pub fn get_in_cgroup(
    pod_bin: &Path,
    netns: &Path,
    cgroup: &Path,
    addr: SocketAddrV4,
    proto: &str,
) -> Result<Reply, String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(pod_bin)
        .args(["get", proto, &addr.to_string()]);
    join_cgroup_on_exec(&mut cmd, cgroup);
    let out = cmd
        .output()
        .map_err(|e| format!("spawning {}: {e}", pod_bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(
            format!("{}{}", stdout, String::from_utf8_lossy(&out.stderr))
                .trim()
                .to_string(),
        );
    }
    Reply::parse(&stdout).ok_or_else(|| format!("bad answer {stdout:?}"))
}

/// Makes the process `cmd` starts join the cgroup v2 folder `cgroup` before it execs (a cgroup
/// holds processes, not threads).
pub fn join_cgroup_on_exec(cmd: &mut Command, cgroup: &Path) {
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").to_string_lossy().as_bytes())
        .expect("no NUL in path");
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if r != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
