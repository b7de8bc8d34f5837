//! `cargo xtask fuzz`: builds the cargo-fuzz targets of tests/fuzz and runs each for a while on
//! a copy of its seed corpus (the repository's corpus never grows from a run), failing on the
//! first crash with the path of the input that caused it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::setup;

pub const TARGETS: [&str; 3] = ["cni_config", "manifests", "tc_packets"];
const FUZZ_DIR: &str = "tests/fuzz";
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Where the fuzz workspace builds (its flags differ from every other build's): `fuzz/` in
/// $CARGO_TARGET_DIR when set, else in the workspace's target folder.
fn target_dir(env: &setup::Env) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| env.target_dir.clone(), PathBuf::from)
        .join("fuzz")
}

/// Builds every target with AddressSanitizer. cargo-fuzz passes `-Zsanitizer=address`, which
/// the stable rustc takes with RUSTC_BOOTSTRAP=1 (no nightly toolchain needed).
///
/// With 16 codegen units rather than cargo-fuzz's default of one: the build instruments every
/// dependency again (kube, k8s-openapi, tokio through petrel-agent), and with one unit per crate
/// the largest of them (k8s-openapi above all) compile on a single core at the end of the build. The targets run a little slower; for a
/// parser harness that costs far less than the build time it saves.
pub fn build(env: &setup::Env) -> anyhow::Result<()> {
    let dir = target_dir(env);
    crate::run_with(
        env,
        &[
            ("RUSTC_BOOTSTRAP", "1"),
            (
                "CARGO_TARGET_DIR",
                dir.to_str().context("non-UTF-8 target dir")?,
            ),
        ],
        "cargo",
        &[
            "fuzz",
            "build",
            "--fuzz-dir",
            FUZZ_DIR,
            "--sanitizer",
            "address",
            "--codegen-units",
            "16",
        ],
    )
}

/// What one run reported.
struct Outcome {
    executions: String,
    cov: String,
    ft: String,
    corpus: usize,
}

/// The last value libFuzzer printed for `key` (`cov: 123`, `stat::number_of_executed_units: 9`).
fn last_value(log: &str, key: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let rest = &l[l.find(key)? + key.len()..];
        rest.split_whitespace().next().map(str::to_string)
    })
}

fn run_one(env: &setup::Env, root: &Path, target: &str, secs: u64) -> anyhow::Result<Outcome> {
    let bin = target_dir(env).join(TRIPLE).join("release").join(target);
    let seeds = root.join(FUZZ_DIR).join("corpus").join(target);
    // A work folder of this run: the corpus copy grows, crash inputs land in artifacts/.
    let work = target_dir(env)
        .join("runs")
        .join(format!("{target}-{}", std::process::id()));
    let corpus = work.join("corpus");
    let artifacts = work.join("artifacts");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&corpus)?;
    fs::create_dir_all(&artifacts)?;
    for e in fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))? {
        let e = e?;
        fs::copy(e.path(), corpus.join(e.file_name()))?;
    }
    let log_path = work.join("fuzz.log");
    let log = fs::File::create(&log_path)?;
    let mut args = vec![
        format!("-max_total_time={secs}"),
        format!("-artifact_prefix={}/", artifacts.display()),
        // A single input running this long is a hang: reported like a crash.
        "-timeout=30".to_string(),
        "-print_final_stats=1".to_string(),
    ];
    if target == "tc_packets" {
        // One Ethernet frame and the selector byte.
        args.push("-max_len=1515".to_string());
    }
    eprintln!("==> fuzz {target} for {secs} s");
    let started = Instant::now();
    let mut cmd = Command::new(&bin);
    cmd.args(&args)
        .arg(&corpus)
        .env("ASAN_OPTIONS", "detect_odr_violation=0")
        .stdout(log.try_clone()?)
        .stderr(log);
    env.apply(&mut cmd);
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let crash = text
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(str::trim)
            .map(str::to_string);
        let lines: Vec<&str> = text.lines().collect();
        // What failed (a panic's message, a sanitizer's report), then how libFuzzer ended.
        for (i, l) in lines.iter().enumerate() {
            if l.contains("panicked at") || l.contains("ERROR: AddressSanitizer") {
                eprintln!("{}", lines[i..lines.len().min(i + 3)].join("\n"));
            }
        }
        eprintln!("{}", lines[lines.len().saturating_sub(12)..].join("\n"));
        match crash {
            Some(input) => bail!(
                "fuzz target {target} crashed ({status}); the input is {input} (reproduce: {} {input}); full log {}",
                bin.display(),
                log_path.display()
            ),
            None => bail!(
                "fuzz target {target} failed ({status}) without writing an input; log {}",
                log_path.display()
            ),
        }
    }
    let outcome = Outcome {
        executions: last_value(&text, "stat::number_of_executed_units:").unwrap_or_default(),
        cov: last_value(&text, "cov: ").unwrap_or_default(),
        ft: last_value(&text, "ft: ").unwrap_or_default(),
        corpus: fs::read_dir(&corpus)?.count(),
    };
    eprintln!(
        "    {target}: {} executions in {:.0} s, cov {} ft {}, corpus {} inputs, no crash",
        outcome.executions,
        started.elapsed().as_secs_f64(),
        outcome.cov,
        outcome.ft,
        outcome.corpus
    );
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(outcome)
}

/// Builds the targets and runs `targets` for `secs` seconds each, one after the other.
pub fn run(env: &setup::Env, root: &Path, secs: u64, targets: &[&str]) -> anyhow::Result<()> {
    if targets.contains(&"tc_packets") && !setup::is_root() {
        bail!("the tc_packets fuzz target needs root (BPF_PROG_TEST_RUN, namespaces, bpffs)");
    }
    build(env)?;
    let mut summary = Vec::new();
    for t in targets {
        let o = run_one(env, root, t, secs)?;
        summary.push(format!(
            "{t}: {} executions, cov {}, ft {}, corpus {}",
            o.executions, o.cov, o.ft, o.corpus
        ));
    }
    eprintln!(
        "==> fuzzing done, no crash:\n    {}",
        summary.join("\n    ")
    );
    Ok(())
}
