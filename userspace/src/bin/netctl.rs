//! netctl: shows what petrel has programmed, read straight from the pinned maps (so it works
//! while the agent is down).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use petrel::ServiceMaps;

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
    /// Every programmed frontend and its backends.
    DumpServices,
    /// Datapath counters, summed over CPUs.
    Stats,
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
    match cli.command {
        Command::DumpServices => {
            let services = maps.dump()?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&services)?),
                Output::Table => {
                    println!("{:<28} {:>8}  BACKENDS", "FRONTEND", "REVNAT");
                    for s in services {
                        let backends: Vec<String> = s
                            .backends
                            .iter()
                            .map(|b| match b.addr {
                                Some(a) => format!("{a} ({})", b.state),
                                None => format!("#{} (missing)", b.id),
                            })
                            .collect();
                        let list = if backends.is_empty() {
                            "(none: rejected)".to_string()
                        } else {
                            backends.join(", ")
                        };
                        println!(
                            "{:<28} {:>8}  {}",
                            s.frontend.to_string(),
                            s.rev_nat_id,
                            list
                        );
                    }
                }
            }
        }
        Command::Stats => {
            let stats = maps.stats()?;
            match cli.output {
                Output::Json => {
                    let obj: serde_json::Map<String, serde_json::Value> = stats
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.into()))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&obj)?);
                }
                Output::Table => {
                    for (name, value) in stats {
                        println!("{name:<20} {value}");
                    }
                }
            }
        }
    }
    Ok(())
}
