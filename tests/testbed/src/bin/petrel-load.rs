//! `petrel-load`: the benchmark's backend server and load generator (tokio, one thread each, so
//! two runs compare the datapath rather than the scheduler).
//!
//! The protocol is one line each way: the client sends `c\n` (answer, then the server closes:
//! TIME_WAIT stays on the backends, not on the one client) or `k\n` (answer, keep the
//! connection); the server answers with its name and a newline.
//!
//! - `serve NAME ADDR`: a backend pod's server.
//! - `conn ADDRS --secs S --concurrency C`: new connections (connect, one request and answer,
//!   close), C at a time; prints one JSON line (rate, p50/p99, errors, answers per backend).
//! - `rr ADDRS --secs S --concurrency C`: round trips on C kept connections; same JSON.
//! - `probe ADDR [--expect NAME] --timeout S`: new connections until one is answered (by NAME);
//!   prints `ready` after the first answer of any kind, then `seen <CLOCK_MONOTONIC ns>`.
//!
//! ADDRS is a comma-separated list of ip:port, used in turn (the direct path spreads over the
//! same pods a service would).
//!
//! `conn` and `rr` also report what the client's TCP stack did meanwhile (`tcp`: deltas of the
//! network namespace's retransmission counters from /proc/net/snmp and /proc/net/netstat), so a
//! latency tail can be told apart: a lost packet shows as a loss probe or a retransmit.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};

#[derive(Parser)]
#[command(name = "petrel-load")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Serve {
        name: String,
        addr: SocketAddr,
    },
    Conn(Load),
    Rr(Load),
    Probe {
        addr: SocketAddr,
        /// The backend that must answer (default: any).
        #[arg(long)]
        expect: Option<String>,
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        /// Every attempt's outcome on stderr, with the time since the start.
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(clap::Args)]
struct Load {
    #[arg(value_delimiter = ',', required = true)]
    addrs: Vec<SocketAddr>,
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Not counted: ARP, caches and conntrack warm up first.
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
}

const IO_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        match cli.cmd {
            Cmd::Serve { name, addr } => serve(name, addr).await,
            Cmd::Conn(l) => load(l, false).await,
            Cmd::Rr(l) => load(l, true).await,
            Cmd::Probe {
                addr,
                expect,
                timeout,
                verbose,
            } => {
                probe(
                    addr,
                    expect.as_deref(),
                    Duration::from_secs_f64(timeout),
                    verbose,
                )
                .await
            }
        }
    })
}

async fn serve(name: String, addr: SocketAddr) -> ExitCode {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("petrel-load serve: bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The parent waits for this line before sending traffic.
    println!("listening");
    let answer: &'static [u8] = format!("{name}\n").into_bytes().leak();
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if w.write_all(answer).await.is_err() || line != "k" {
                    break;
                }
            }
        });
    }
}

/// Connects, sends `c`, reads the answer to the server's close.
async fn one_connection(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await??;
    s.set_nodelay(true)?;
    s.write_all(b"c\n").await?;
    let mut out = String::new();
    tokio::time::timeout(IO_TIMEOUT, s.read_to_string(&mut out)).await??;
    match out.strip_suffix('\n') {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(std::io::Error::other(format!("bad answer {out:?}"))),
    }
}

/// One round trip on a kept connection.
async fn round_trip(s: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<()> {
    s.get_mut().write_all(b"k\n").await?;
    line.clear();
    let n = tokio::time::timeout(IO_TIMEOUT, s.read_line(line)).await??;
    if n == 0 {
        return Err(std::io::Error::other("connection closed"));
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    backends: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, e: std::io::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

async fn worker(
    addrs: Vec<SocketAddr>,
    first: usize,
    kept: bool,
    start: Instant,
    end: Instant,
) -> Tally {
    let mut t = Tally::default();
    let mut next = first;
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut line = String::new();
    while Instant::now() < end {
        let began = Instant::now();
        let counted = began >= start;
        if kept {
            if conn.is_none() {
                let addr = addrs[next % addrs.len()];
                next += 1;
                match tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        conn = Some(BufReader::new(s));
                    }
                    Ok(Err(e)) => t.error(e),
                    Err(_) => t.error(std::io::Error::other("connect timed out")),
                }
                continue;
            }
            let s = conn.as_mut().expect("connected above");
            match round_trip(s, &mut line).await {
                Ok(()) if counted => {
                    t.latencies_us.push(began.elapsed().as_micros() as u32);
                    let name = line.trim_end();
                    if let Some(n) = t.backends.get_mut(name) {
                        *n += 1;
                    } else {
                        t.backends.insert(name.to_string(), 1);
                    }
                }
                Ok(()) => {}
                Err(e) => {
                    conn = None;
                    if counted {
                        t.error(e);
                    }
                }
            }
        } else {
            let addr = addrs[next % addrs.len()];
            next += 1;
            match one_connection(addr).await {
                Ok(name) if counted => {
                    t.latencies_us.push(began.elapsed().as_micros() as u32);
                    *t.backends.entry(name).or_default() += 1;
                }
                Ok(_) => {}
                Err(e) if counted => t.error(e),
                Err(_) => {}
            }
        }
    }
    t
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds (NaN when empty).
fn sorted_us_percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    petrel_testbed::stats::nearest_rank(sorted_us, p).map_or(f64::NAN, |us| f64::from(us) / 1000.0)
}

/// The TCP counters `conn` and `rr` report: how a stack recovers from a lost or late packet.
const TCP_COUNTERS: [&str; 8] = [
    "Tcp:RetransSegs",
    "TcpExt:TCPSynRetrans",
    "TcpExt:TCPLossProbes",
    "TcpExt:TCPTimeouts",
    "TcpExt:TCPFastRetrans",
    "TcpExt:TCPSpuriousRTOs",
    "TcpExt:TCPOFOQueue",
    "TcpExt:TCPAbortOnData",
];

/// This network namespace's TCP counters by `Group:Name` (each file holds pairs of lines: the
/// names, then the values, both starting with the group).
fn tcp_counters() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks_exact(2) {
            let (mut names, values) = (pair[0].split_whitespace(), pair[1].split_whitespace());
            let Some(group) = names.next() else { continue };
            for (name, value) in names.zip(values.skip(1)) {
                if let Ok(v) = value.parse() {
                    out.insert(format!("{group}{name}"), v);
                }
            }
        }
    }
    out
}

async fn load(l: Load, kept: bool) -> ExitCode {
    let before = tcp_counters();
    let start = Instant::now() + Duration::from_secs_f64(l.warmup);
    let end = start + Duration::from_secs_f64(l.secs);
    let tasks: Vec<_> = (0..l.concurrency)
        .map(|i| tokio::spawn(worker(l.addrs.clone(), i, kept, start, end)))
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.expect("worker task");
        all.latencies_us.extend(t.latencies_us);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
        for (k, v) in t.backends {
            *all.backends.entry(k).or_default() += v;
        }
    }
    let after = tcp_counters();
    let tcp: BTreeMap<&str, u64> = TCP_COUNTERS
        .iter()
        .map(|k| {
            let delta = after
                .get(*k)
                .unwrap_or(&0)
                .saturating_sub(*before.get(*k).unwrap_or(&0));
            (*k, delta)
        })
        .collect();
    let secs = end.saturating_duration_since(start).as_secs_f64();
    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len();
    let out = serde_json::json!({
        "ops": n,
        "per_sec": n as f64 / secs,
        "p50_ms": sorted_us_percentile_ms(&all.latencies_us, 50.0),
        "p99_ms": sorted_us_percentile_ms(&all.latencies_us, 99.0),
        "errors": all.errors,
        "first_error": all.first_error,
        "backends": all.backends,
        "tcp": tcp,
    });
    println!("{out}");
    ExitCode::SUCCESS
}

async fn probe(
    addr: SocketAddr,
    expect: Option<&str>,
    timeout: Duration,
    verbose: bool,
) -> ExitCode {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut ready = false;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let outcome = one_connection(addr).await;
        if verbose {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            eprintln!("{ms:.1} ms: {outcome:?}");
        }
        match outcome {
            Ok(name) => {
                let seen_at = petrel_testbed::monotonic_ns();
                if !ready {
                    println!("ready");
                    ready = true;
                }
                if expect.is_none_or(|e| e == name) {
                    println!("seen {seen_at}");
                    return ExitCode::SUCCESS;
                }
                last = format!("answered by {name}");
                // A millisecond between attempts: a probe at full speed would take a core from
                // the proxy whose latency it measures.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => {
                if !ready {
                    println!("ready");
                    ready = true;
                }
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let by = expect.unwrap_or("any backend");
    eprintln!("petrel-load probe: {addr} not answered by {by} within {timeout:?} (last: {last})");
    ExitCode::FAILURE
}
