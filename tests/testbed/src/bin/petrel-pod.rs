//! A test pod's workload, as a process: `petrel-pod serve NAME ADDR:PORT` answers TCP and UDP
//! requests with "NAME CLIENT_IP"; `petrel-pod get tcp|udp ADDR:PORT` makes one request and prints
//! the answer (exit 1 with the error otherwise; ADDR may be a DNS name; `tcp6`/`udp6` from an
//! AF_INET6 socket to the IPv4-mapped address); `petrel-pod session ADDR:PORT...` keeps one
//! connected UDP socket per address and, per line on stdin, `x N` makes one request on socket N
//! and `r N` connects it anew, printing one line each ("ok SERVER CLIENT PEER", "ok connected",
//! "err ERRNO TEXT"): a long-lived client for tests of what happens to connected sockets.
//! `petrel-pod sidecar LISTEN:PORT MARK`: a service mesh's sidecar in miniature (see `sidecar`).

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
};

use nix::sys::socket::{getsockopt, sockopt};

use petrel_testbed::{echo, pod};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve", name, addr] => {
            let addr: SocketAddrV4 = match addr.parse() {
                Ok(a) => a,
                Err(e) => return fail(&format!("bad address {addr}: {e}")),
            };
            let _server = pod::Server::start(None, name, addr);
            loop {
                std::thread::park();
            }
        }
        ["get", proto, addr] => {
            let addr = match resolve(addr) {
                Ok(a) => a,
                Err(e) => return fail(&format!("bad address {addr}: {e}")),
            };
            let r = match *proto {
                "tcp" => pod::tcp_get(addr),
                "udp" => pod::udp_get(addr),
                "tcp6" => pod::tcp6_get(addr),
                "udp6" => pod::udp6_get(addr),
                other => return fail(&format!("unknown protocol {other}")),
            };
            match r {
                Ok(reply) => {
                    println!("{} {} {}", reply.server, reply.client_seen, reply.peer);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("{proto} {addr}: {e}")),
            }
        }
        ["session", addrs @ ..] if !addrs.is_empty() => {
            let mut targets = Vec::new();
            for a in addrs {
                match a.parse::<SocketAddrV4>() {
                    Ok(a) => targets.push(a),
                    Err(e) => return fail(&format!("bad address {a}: {e}")),
                }
            }
            session(&targets)
        }
        ["sidecar", listen, mark] => match (listen.parse::<SocketAddrV4>(), mark.parse::<u32>()) {
            (Ok(l), Ok(m)) => sidecar(l, m),
            _ => fail(&format!("bad sidecar arguments {listen} {mark}")),
        },
        _ => fail(
            "usage: petrel-pod serve NAME ADDR:PORT | petrel-pod get tcp|udp|tcp6|udp6 ADDR|NAME:PORT | petrel-pod session ADDR:PORT... | petrel-pod sidecar ADDR:PORT MARK",
        ),
    }
}

/// ADDR:PORT, or NAME:PORT resolved by the system's resolver (in a pod: the cluster DNS, with
/// the search domains kubelet wrote), its first IPv4 address.
fn resolve(addr: &str) -> std::io::Result<SocketAddrV4> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .find_map(|a| match a {
            std::net::SocketAddr::V4(a) => Some(a),
            std::net::SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| std::io::Error::other("no IPv4 address"))
}

fn connect(to: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    Ok(s)
}

fn err_line(e: &std::io::Error) -> String {
    format!("err {} {e}", e.raw_os_error().unwrap_or(0))
}

fn session(targets: &[SocketAddrV4]) -> ExitCode {
    let mut socks = Vec::new();
    for t in targets {
        match connect(*t) {
            Ok(s) => socks.push(s),
            Err(e) => return fail(&format!("connecting to {t}: {e}")),
        }
    }
    println!("ok connected");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (cmd, n) = match line.split_once(' ') {
            Some((c, n)) => (c, n.trim().parse::<usize>().ok()),
            None => (line.as_str(), None),
        };
        let Some(n) = n.filter(|n| *n < socks.len()) else {
            println!("err 0 bad command {line:?}");
            continue;
        };
        let out = match cmd {
            "x" => match pod::udp_connected_exchange(&socks[n]) {
                Ok(r) => format!("ok {} {} {}", r.server, r.client_seen, r.peer),
                Err(e) => err_line(&e),
            },
            "r" => match connect(targets[n]) {
                Ok(s) => {
                    socks[n] = s;
                    "ok connected".to_string()
                }
                Err(e) => err_line(&e),
            },
            _ => format!("err 0 bad command {line:?}"),
        };
        println!("{out}");
    }
    ExitCode::SUCCESS
}

/// A service mesh's sidecar in miniature, for a pod whose outbound TCP an iptables REDIRECT
/// sends to `listen` (as Istio's and Linkerd's init containers set up): prints "ready", then per
/// connection "orig ADDR:PORT" (SO_ORIGINAL_DST: where the application meant to go) and relays
/// one request and the whole answer through its own connection there, from a socket marked
/// `mark` (which the REDIRECT rule skips). Runs until killed.
fn sidecar(listen: SocketAddrV4, mark: u32) -> ExitCode {
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => return fail(&format!("binding {listen}: {e}")),
    };
    say("ready");
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let orig = match getsockopt(&c, sockopt::OriginalDst) {
            Ok(sin) => SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ),
            Err(e) => {
                say(&format!("err {} SO_ORIGINAL_DST", e as i32));
                continue;
            }
        };
        say(&format!("orig {orig}"));
        if let Err(e) = relay(&mut c, orig, mark) {
            say(&err_line(&e));
        }
    }
    ExitCode::SUCCESS
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn relay(client: &mut TcpStream, to: SocketAddrV4, mark: u32) -> std::io::Result<()> {
    let mut up = echo::tcp_connect(
        to,
        echo::TcpOptions {
            mark: Some(mark),
            ..echo::TcpOptions::default()
        },
    )?;
    client.set_read_timeout(Some(pod::TIMEOUT))?;
    let mut buf = [0u8; 64];
    let n = client.read(&mut buf)?;
    up.write_all(&buf[..n])?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    client.write_all(&answer)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("petrel-pod: {msg}");
    ExitCode::FAILURE
}
