//! netctl: shows what petrel has programmed, read straight from the pinned maps (so it works
//! while the agent is down).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use petrel::{
    ServiceMaps,
    maps::{ProgrammedBackend, conntrack},
};

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
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
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
    /// Flows tracked by the TC path (client, frontend, backend, SNAT).
    DumpConntrack {
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Datapath counters (translated, dropped by reason, rejected), summed over CPUs.
    Stats,
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
    let maps_dir = cli.bpffs_root.join("maps");
    let maps = ServiceMaps::open(&maps_dir).with_context(|| {
        format!(
            "is petrel running? no datapath pinned under {}",
            cli.bpffs_root.display()
        )
    })?;
    let json = matches!(cli.output, Output::Json);
    match cli.command {
        Command::DumpServices => {
            let services = maps.dump()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&services)?);
                return Ok(());
            }
            println!(
                "{:<26} {:>7}  {:<28} BACKENDS",
                "FRONTEND", "REVNAT", "FLAGS"
            );
            for s in services {
                let mut flags = s.flags.join(",");
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
                    "{:<26} {:>7}  {:<28} {}",
                    s.frontend.to_string(),
                    s.rev_nat_id,
                    flags,
                    backends
                );
            }
        }
        Command::DumpBackends => {
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
        }
        Command::DumpConntrack { limit } => {
            let flows = conntrack(&maps_dir, limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
                return Ok(());
            }
            println!(
                "{:<5} {:<22} {:<22} {:>8}  SNAT",
                "PROTO", "CLIENT", "FRONTEND", "BACKEND"
            );
            for f in flows {
                let proto = f.proto.map_or("?".to_string(), |p| p.to_string());
                let snat = f.snat.map_or("-".to_string(), |s| s.to_string());
                println!(
                    "{proto:<5} {:<22} {:<22} {:>8}  {snat}",
                    f.client.to_string(),
                    f.frontend.to_string(),
                    f.backend_id
                );
            }
        }
        Command::Stats => {
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
                println!("{name:<22} {value}");
            }
        }
    }
    Ok(())
}
