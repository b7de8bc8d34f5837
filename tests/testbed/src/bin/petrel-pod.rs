//! A test pod's workload, as a process: `petrel-pod serve NAME ADDR:PORT` answers TCP and UDP
//! requests with "NAME CLIENT_IP"; `petrel-pod get tcp|udp ADDR:PORT` makes one request and prints
//! the answer (exit 1 with the error otherwise).

use std::{net::SocketAddrV4, process::ExitCode};

use petrel_testbed::pod;

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
            let addr: SocketAddrV4 = match addr.parse() {
                Ok(a) => a,
                Err(e) => return fail(&format!("bad address {addr}: {e}")),
            };
            let r = match *proto {
                "tcp" => pod::tcp_get(addr),
                "udp" => pod::udp_get(addr),
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
        _ => fail("usage: petrel-pod serve NAME ADDR:PORT | petrel-pod get tcp|udp ADDR:PORT"),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("petrel-pod: {msg}");
    ExitCode::FAILURE
}
