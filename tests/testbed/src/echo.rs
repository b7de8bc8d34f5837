//! An echo workload for connection-tracking tests: a server that answers every request line of a
//! TCP connection (kept open for as many requests as the client sends) and every UDP datagram
//! with its name, the client address and port it saw, and the request itself; and the clients,
//! which can bind a chosen source address and port. A test can then tell whose reply a client
//! got, which backend produced it and which source the backend saw.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::pod::TIMEOUT;

/// A UDP request starting with `size=N ` is answered with a datagram of N bytes: the usual
/// answer padded with dots (a large DNS or syslog answer, sent as IP fragments).
pub const SIZE_PREFIX: &str = "size=";

/// One answer: "SERVER CLIENT_SEEN PAYLOAD".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echo {
    pub server: String,
    /// The client address and port the server saw (after any SNAT).
    pub seen: SocketAddrV4,
    pub payload: String,
}

impl Echo {
    pub fn parse(s: &str) -> Option<Echo> {
        let mut it = s.trim_end_matches('\n').splitn(3, ' ');
        Some(Echo {
            server: it.next()?.to_string(),
            seen: it.next()?.parse().ok()?,
            payload: it.next().unwrap_or_default().to_string(),
        })
    }
}

fn answer(name: &str, peer: SocketAddr, request: &str) -> String {
    format!("{name} {peer} {request}")
}

/// Serves TCP and UDP echo on `addr` inside the namespace at `netns` (None: the caller's). Stops,
/// closing every socket (also accepted connections), on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl EchoServer {
    pub fn start(netns: Option<PathBuf>, name: &str, addr: SocketAddrV4) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::new();
        for udp in [false, true] {
            let (stop, name, netns, ready, conns) = (
                stop.clone(),
                name.to_string(),
                netns.clone(),
                ready_tx.clone(),
                connections.clone(),
            );
            threads.push(thread::spawn(move || {
                if let Some(ns) = netns {
                    crate::netns::enter(&ns);
                }
                if udp {
                    match UdpSocket::bind(addr) {
                        Ok(s) => {
                            let _ = ready.send(Ok(()));
                            serve_udp(&stop, &name, &s);
                        }
                        Err(e) => drop(ready.send(Err(format!("udp bind: {e}")))),
                    }
                } else {
                    match TcpListener::bind(addr) {
                        Ok(l) => {
                            let _ = ready.send(Ok(()));
                            serve_tcp(&stop, &name, &l, &conns);
                        }
                        Err(e) => drop(ready.send(Err(format!("tcp bind: {e}")))),
                    }
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(TIMEOUT)
                .expect("echo server thread did not start")
                .unwrap_or_else(|e| panic!("echo server {name} on {addr}: {e}"));
        }
        EchoServer {
            stop,
            threads,
            connections,
        }
    }
}

fn serve_tcp(
    stop: &Arc<AtomicBool>,
    name: &str,
    listener: &TcpListener,
    conns: &Mutex<Vec<JoinHandle<()>>>,
) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, peer)) => {
                let (stop, name) = (stop.clone(), name.to_string());
                let t = thread::spawn(move || serve_connection(&stop, &name, s, peer));
                conns.lock().expect("connections lock").push(t);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => poll_in(listener, 50),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Answers each line of one connection until the client closes it or the server stops.
fn serve_connection(stop: &AtomicBool, name: &str, s: TcpStream, peer: SocketAddr) {
    let _ = s.set_nonblocking(false);
    // Short reads, so the thread sees `stop` soon; a partial line is kept across timeouts.
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let Ok(mut out) = s.try_clone() else { return };
    let mut reader = BufReader::new(s);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => {
                let request = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
                let reply = answer(name, peer, &request) + "\n";
                if out.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn serve_udp(stop: &AtomicBool, name: &str, sock: &UdpSocket) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let request = String::from_utf8_lossy(&buf[..n]).to_string();
        let mut reply = answer(name, peer, &request);
        if let Some(size) = request
            .strip_prefix(SIZE_PREFIX)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
        {
            while reply.len() < size {
                reply.push('.');
            }
        }
        let _ = sock.send_to(reply.as_bytes(), peer);
    }
}

fn poll_in(fd: &impl std::os::fd::AsRawFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *self.connections.lock().expect("connections lock"));
        for t in conns {
            let _ = t.join();
        }
    }
}

/// How a test client's TCP socket is set up before its connect().
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpOptions {
    /// Bound to this address first, with SO_REUSEADDR (a client reusing a port).
    pub bind: Option<SocketAddrV4>,
    /// SO_MARK (a sidecar's own upstream connection, which its redirect rule skips).
    pub mark: Option<u32>,
}

/// A TCP connection to `to` from the calling thread's namespace, set up as `opts` says, giving
/// up after `pod::TIMEOUT` (connect, reads and writes).
pub fn tcp_connect(to: SocketAddrV4, opts: TcpOptions) -> std::io::Result<TcpStream> {
    use nix::sys::{
        socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
            sockopt,
        },
        time::{TimeVal, TimeValLike as _},
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )?;
    if let Some(mark) = opts.mark {
        setsockopt(&fd, sockopt::Mark, &mark)?;
    }
    // A blocking connect gives up after the send timeout.
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &TimeVal::milliseconds(TIMEOUT.as_millis() as i64),
    )?;
    if let Some(src) = opts.bind {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        bind(fd.as_raw_fd(), &SockaddrIn::from(src))?;
    }
    match connect(fd.as_raw_fd(), &SockaddrIn::from(to)) {
        // What a blocking connect returns when the send timeout ends it.
        Err(nix::errno::Errno::EINPROGRESS) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {to} ({opts:?}): no answer in {TIMEOUT:?}"),
            ));
        }
        r => r?,
    }
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// A TCP socket bound to `src` (SO_REUSEADDR, as a client reusing a port) and connected to `to`.
pub fn tcp_from(src: SocketAddrV4, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    tcp_connect(
        to,
        TcpOptions {
            bind: Some(src),
            ..TcpOptions::default()
        },
    )
}

/// An open TCP connection to an echo server, for many requests.
pub struct EchoConn {
    reader: BufReader<TcpStream>,
}

impl EchoConn {
    /// Connects from `src` (port 0: any) to `to`.
    pub fn open(src: SocketAddrV4, to: SocketAddrV4) -> std::io::Result<EchoConn> {
        Ok(EchoConn {
            reader: BufReader::new(tcp_from(src, to)?),
        })
    }

    /// Sends `payload` (no newline in it) and reads the answer line.
    pub fn ask(&mut self, payload: &str) -> std::io::Result<Echo> {
        let mut s = self.reader.get_ref();
        s.write_all(format!("{payload}\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(no_answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the answer",
            ));
        }
        Echo::parse(&line).ok_or_else(|| std::io::Error::other(format!("bad answer {line:?}")))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.reader.get_ref().local_addr()
    }
}

/// A read timeout (EAGAIN on a socket with SO_RCVTIMEO) said as what it means here.
fn no_answer(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::WouldBlock {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer in {TIMEOUT:?}"),
        )
    } else {
        e
    }
}

/// A UDP socket bound to `src` in the calling thread's namespace.
pub fn udp_from(src: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(src)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// Sends `payload` on the unconnected socket `s` to `to` and reads one answer, which must come
/// from `to`. Returns the answer and its size in bytes.
pub fn udp_ask(s: &UdpSocket, to: SocketAddrV4, payload: &str) -> std::io::Result<(Echo, usize)> {
    s.send_to(payload.as_bytes(), to)?;
    let mut buf = vec![0u8; 65536];
    let (n, from) = s.recv_from(&mut buf).map_err(no_answer)?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    if from != SocketAddr::V4(to) {
        return Err(std::io::Error::other(format!(
            "answer {text:?} came from {from}, not {to}"
        )));
    }
    Echo::parse(&text)
        .map(|e| (e, n))
        .ok_or_else(|| std::io::Error::other(format!("bad answer {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_server_seen_and_the_rest_as_payload() {
        let e = Echo::parse("b0 10.99.0.1:40000 tcp from a 1\n").expect("parses");
        assert_eq!(e.server, "b0");
        assert_eq!(e.seen, "10.99.0.1:40000".parse().expect("addr"));
        assert_eq!(e.payload, "tcp from a 1");
        assert_eq!(Echo::parse("b0 nonsense x"), None);
        assert_eq!(
            Echo::parse("b0 10.0.0.1:1").map(|e| e.payload),
            Some(String::new())
        );
    }
}
