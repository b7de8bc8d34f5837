//! netctl: shows what petrel has programmed, read straight from the pinned maps (so it works
//! while the agent is down).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::{Ipv4Addr, SocketAddrV4};

use petrel_datapath::{Frontend, Proto, ServiceMaps, inspect::ProgrammedBackend, maps::MapsError};

#[derive(Parser)]
#[command(name = "netctl", version, about = "Inspect petrel's datapath")]
struct Cli {
    /// The agent's bpffs root.
    #[arg(
        long,
        env = "PETREL_BPFFS_ROOT",
        default_value = "/sys/fs/bpf/petrel",
        global = true
    )]
    bpffs_root: PathBuf,
    /// Where the agent publishes service names (shown when the agent is up).
    #[arg(
        long,
        env = "PETREL_STATE_DIR",
        default_value = "/run/petrel",
        global = true
    )]
    state_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// The same as `-o json`.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Every programmed frontend with its flags and backends (per scope when a Local traffic
    /// policy splits them).
    DumpServices,
    /// Every backend in the backend map.
    DumpBackends,
    /// Connections tracked by the TC path, one line each (its forward and reply entries
    /// joined): protocol, client, frontend, backend, service, NAT source and why, state, and
    /// the seconds left until it is over without packets.
    DumpConntrack {
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Datapath counters (translated, dropped by reason, rejected), summed over CPUs.
    Stats,
    /// Frontends the agent could not program (a full map, too many backends, a map error):
    /// frontend, service and why, as the agent last published them.
    DumpRefused,
    /// Which backend a flow gets and why: conntrack, traffic policy scope, empty service,
    /// session affinity, Maglev position or random slot.
    Explain {
        /// The client: IP or IP:PORT (the port decides Maglev and finds conntrack entries).
        src: String,
        /// The frontend: IP:PORT/PROTO (PROTO tcp or udp, default tcp).
        dst: String,
        /// The flow arrives from outside the node (NodePort, externalIPs) rather than from a pod.
        #[arg(long)]
        from_outside: bool,
    },
}

fn list(backends: &[ProgrammedBackend]) -> String {
    if backends.is_empty() {
        return "(none)".to_string();
    }
    backends
        .iter()
        .map(|b| {
            let addr = b.addr.map_or(format!("#{}", b.id), |a| a.to_string());
            let remote = if b.remote { ",remote" } else { "" };
            format!("{addr} ({}{remote})", b.state)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let maps = match ServiceMaps::open(&cli.bpffs_root.join("maps")) {
        Ok(m) => m,
        // A pin of the wrong shape: petrel is running, another version pinned the maps; say
        // what is wrong rather than ask.
        Err(e @ (MapsError::Shape { .. } | MapsError::WrongType { .. })) => {
            return Err(anyhow::Error::new(e));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "is petrel running? no datapath pinned under {}",
                cli.bpffs_root.display()
            )));
        }
    };
    let json = cli.json || matches!(cli.output, Output::Json);
    match cli.command {
        Command::DumpServices => dump_services(&maps, &cli.state_dir, json),
        Command::DumpBackends => dump_backends(&maps, json),
        Command::DumpConntrack { limit } => dump_conntrack(&maps, &cli.state_dir, limit, json),
        Command::Explain {
            src,
            dst,
            from_outside,
        } => explain(&maps, &src, &dst, from_outside, json),
        Command::Stats => stats(&maps, json),
        Command::DumpRefused => dump_refused(&cli.state_dir, json),
    }
}

fn dump_services(maps: &ServiceMaps, state_dir: &Path, json: bool) -> anyhow::Result<()> {
    let services = maps.dump()?;
    let names = petrel_datapath::inspect::names::read(state_dir);
    if json {
        let out: Vec<serde_json::Value> = services
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).expect("serialisable");
                if let Some(n) = names.get(&s.frontend.to_string()) {
                    v["name"] = serde_json::to_value(n).expect("serialisable");
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        refused_hint(state_dir);
        return Ok(());
    }
    println!(
        "{:<24} {:<12} {:<24} {:>6}  {:<15} {:<26} BACKENDS",
        "SERVICE", "TYPE", "FRONTEND", "REVNAT", "POLICY ext/int", "FLAGS"
    );
    for s in services {
        let (service, kind, policy) = match names.get(&s.frontend.to_string()) {
            Some(n) if n.port_name.is_empty() => (
                n.service.clone(),
                n.kind.clone(),
                format!(
                    "{}/{}",
                    n.external_traffic_policy, n.internal_traffic_policy
                ),
            ),
            Some(n) => (
                format!("{}:{}", n.service, n.port_name),
                n.kind.clone(),
                format!(
                    "{}/{}",
                    n.external_traffic_policy, n.internal_traffic_policy
                ),
            ),
            None => ("-".to_string(), "-".to_string(), "-".to_string()),
        };
        let mut flags = s
            .flags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if let Some(t) = s.affinity_timeout_s {
            flags = format!("{flags}({t}s)");
        }
        let backends = match &s.internal_backends {
            None => list(&s.backends),
            Some(internal) => format!(
                "external: {}; internal: {}",
                list(&s.backends),
                list(internal)
            ),
        };
        println!(
            "{service:<24} {kind:<12} {:<24} {:>6}  {policy:<15} {:<26} {backends}",
            s.frontend.to_string(),
            s.rev_nat_id,
            flags,
        );
    }
    refused_hint(state_dir);
    Ok(())
}

/// Refused frontends are not in the maps: dump-services says so after its output, on stderr.
fn refused_hint(state_dir: &Path) {
    match petrel_datapath::inspect::names::read_refused(state_dir) {
        Ok(r) if !r.is_empty() => eprintln!(
            "{} frontend(s) refused by the agent, not programmed: netctl dump-refused",
            r.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("cannot read the agent's refused frontends: {e}"),
    }
}

fn dump_refused(state_dir: &Path, json: bool) -> anyhow::Result<()> {
    let refused = petrel_datapath::inspect::names::read_refused(state_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&refused)?);
        return Ok(());
    }
    println!("{:<24} {:<32} WHY", "FRONTEND", "SERVICE");
    for r in refused {
        println!("{:<24} {:<32} {}", r.frontend, r.service, r.why);
    }
    Ok(())
}

fn dump_backends(maps: &ServiceMaps, json: bool) -> anyhow::Result<()> {
    let backends = maps.backends()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&backends)?);
        return Ok(());
    }
    println!("{:>8}  {:<22} {:<12} REMOTE", "ID", "ADDRESS", "STATE");
    for b in backends {
        let addr = b.addr.map_or("-".to_string(), |a| a.to_string());
        println!("{:>8}  {addr:<22} {:<12} {}", b.id, b.state, b.remote);
    }
    Ok(())
}

fn dump_conntrack(
    maps: &ServiceMaps,
    state_dir: &Path,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let names = petrel_datapath::inspect::names::read(state_dir);
    let flows = maps.conntrack(limit, &names)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
        return Ok(());
    }
    println!(
        "{:<5} {:<22} {:<22} {:<30} {:<24} {:<36} {:<12} {:>7}",
        "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SERVICE", "NAT", "STATE", "EXPIRES"
    );
    for f in flows {
        let backend = if f.masquerade {
            "(masquerade)".to_string()
        } else if f.inbound {
            "(inbound)".to_string()
        } else {
            match f.backend {
                Some(b) => format!("{b} #{}", f.backend_id),
                None => format!("#{}", f.backend_id),
            }
        };
        let nat = match (f.snat, &f.nat) {
            (Some(s), Some(why)) => format!("{s} ({why})"),
            (Some(s), None) => s.to_string(),
            (None, Some(why)) => why.clone(),
            (None, None) => "-".to_string(),
        };
        println!(
            "{:<5} {:<22} {:<22} {backend:<30} {:<24} {nat:<36} {:<12} {:>6}s",
            f.proto,
            f.client.to_string(),
            f.frontend.to_string(),
            f.service.as_deref().unwrap_or("-"),
            f.state,
            f.expires_in_s,
        );
    }
    Ok(())
}

fn explain(
    maps: &ServiceMaps,
    src: &str,
    dst: &str,
    from_outside: bool,
    json: bool,
) -> anyhow::Result<()> {
    let client: SocketAddrV4 = match src.parse::<SocketAddrV4>() {
        Ok(s) => s,
        Err(_) => SocketAddrV4::new(
            src.parse::<Ipv4Addr>()
                .with_context(|| format!("SRC {src:?}: want IP or IP:PORT"))?,
            0,
        ),
    };
    let (addr, proto) = dst.split_once('/').unwrap_or((dst, "tcp"));
    let addr: SocketAddrV4 = addr
        .parse()
        .with_context(|| format!("DST {dst:?}: want IP:PORT/PROTO"))?;
    let proto: Proto = proto.parse().map_err(anyhow::Error::msg)?;
    let fe = Frontend {
        addr: *addr.ip(),
        port: addr.port(),
        proto,
    };
    let e = maps.explain(client, fe, from_outside)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    println!("{src} -> {fe} ({} traffic)", e.scope);
    for (i, step) in e.steps.iter().enumerate() {
        println!("  {}. {step}", i + 1);
    }
    match e.backend {
        Some(b) => println!("  => backend {b}"),
        None => println!("  => no single backend is determined"),
    }
    Ok(())
}

fn stats(maps: &ServiceMaps, json: bool) -> anyhow::Result<()> {
    let stats = maps.stats()?;
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = stats
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    for (name, value) in stats {
        println!("{name:<24} {value}");
    }
    Ok(())
}
