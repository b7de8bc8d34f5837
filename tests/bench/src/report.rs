//! What the benchmark writes: one Markdown report, one JSON file and the scaling plot, with the
//! machine, kernel and versions they were measured on, and every target met or missed.

use std::{path::Path, process::Command};

use serde_json::{Value, json};

/// One part of the report.
pub struct Section {
    pub md: String,
    pub json: Value,
    pub targets: Vec<Target>,
}

/// A target from the issue, checked against this run's figures.
pub struct Target {
    pub what: String,
    pub value: f64,
    pub bound: f64,
    /// true: the value must be at most `bound`; false: at least.
    pub upper: bool,
}

impl Target {
    pub fn at_most(what: &str, value: f64, bound: f64) -> Target {
        Target {
            what: what.to_string(),
            value,
            bound,
            upper: true,
        }
    }

    pub fn at_least(what: &str, value: f64, bound: f64) -> Target {
        Target {
            upper: false,
            ..Target::at_most(what, value, bound)
        }
    }

    pub fn met(&self) -> bool {
        if self.upper {
            self.value <= self.bound
        } else {
            self.value >= self.bound
        }
    }

    fn row(&self) -> String {
        let (op, verdict) = (
            if self.upper { "<=" } else { ">=" },
            if self.value.is_nan() {
                "not measured"
            } else if self.met() {
                "met"
            } else {
                "**missed**"
            },
        );
        format!(
            "| {} | {} | {op} {} | {verdict} |\n",
            self.what,
            num(self.value),
            num(self.bound)
        )
    }
}

/// A number with as many decimals as its size calls for.
pub fn num(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn sh_out(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default()
}

pub fn machine(quick: bool) -> Value {
    let first_line = |s: String| s.lines().next().unwrap_or_default().to_string();
    let kube_proxy = petrel_testbed::apiserver::bin_dir().join("kube-proxy");
    json!({
        "kernel": sh_out("uname", &["-r"]),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu_model(),
        "memory_gib": sh_out("awk", &["/MemTotal/ {printf \"%.1f\", $2/1048576}", "/proc/meminfo"]),
        "petrel": env!("CARGO_PKG_VERSION"),
        "kube_proxy": sh_out(&kube_proxy.display().to_string(), &["--version"]),
        "iptables": sh_out("iptables", &["--version"]),
        "containernetworking_plugins": sh_out("dpkg-query", &["-W", "-f=${Version}", "containernetworking-plugins"]),
        "etcd": first_line(sh_out("etcd", &["--version"])),
        "quick": quick,
        "date": sh_out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    })
}

/// Writes `bench.md` and `bench.json` under `dir`; returns the Markdown.
pub fn write(dir: &Path, machine: &Value, sections: &[(&str, Section)]) -> String {
    write_as(dir, "bench", machine, sections)
}

/// Writes `<stem>.md` and `<stem>.json` under `dir`; returns the Markdown.
pub fn write_as(dir: &Path, stem: &str, machine: &Value, sections: &[(&str, Section)]) -> String {
    let mut md = String::from("# petrel benchmark results\n\n");
    md.push_str(&format!(
        "Machine: {} CPUs ({}), {} GiB, kernel {}; petrel {}, {}, {}, containernetworking-plugins {}, {}; {}{}.\n\n",
        machine["cpus"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["memory_gib"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["petrel"].as_str().unwrap_or("?"),
        machine["kube_proxy"].as_str().unwrap_or("?"),
        machine["iptables"].as_str().unwrap_or("?"),
        machine["containernetworking_plugins"].as_str().unwrap_or("?"),
        machine["etcd"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?"),
        if machine["quick"].as_bool() == Some(true) {
            " (--quick: fewer services and repetitions; not for comparison)"
        } else {
            ""
        },
    ));
    md.push_str("## Targets (ratios and bounds from the same run)\n\n| target | this run | bound | verdict |\n|---|---|---|---|\n");
    for (_, s) in sections {
        for t in &s.targets {
            md.push_str(&t.row());
        }
    }
    md.push('\n');
    let mut all = json!({"machine": machine});
    for (key, s) in sections {
        md.push_str(&s.md);
        md.push('\n');
        let targets: Vec<Value> = s
            .targets
            .iter()
            .map(|t| {
                json!({"target": t.what, "value": t.value, "bound": t.bound,
                       "upper_bound": t.upper, "met": t.met()})
            })
            .collect();
        let mut part = s.json.clone();
        part["targets"] = json!(targets);
        all[*key] = part;
    }
    std::fs::create_dir_all(dir).expect("results folder");
    std::fs::write(dir.join(format!("{stem}.md")), &md).expect("write the report");
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&all).expect("json") + "\n",
    )
    .expect("write the JSON report");
    md
}

/// Plots `series` (name, [(services, value)]) on a log-scale x axis with gnuplot into `png`.
pub fn plot(png: &Path, title: &str, ylabel: &str, series: &[(String, Vec<(f64, f64)>)]) {
    if let Some(parent) = png.parent() {
        std::fs::create_dir_all(parent).expect("results folder");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut script = format!(
        "set terminal pngcairo size 900,520 noenhanced\nset output '{}'\nset title '{title}'\n\
         set logscale x\nset xlabel 'services (10 endpoints each)'\nset ylabel '{ylabel}'\n\
         set yrange [0:*]\nset key outside right\nset grid\nplot ",
        png.display()
    );
    let mut plots = Vec::new();
    for (i, (name, points)) in series.iter().enumerate() {
        let data = dir.path().join(format!("{i}.dat"));
        let rows: String = points
            .iter()
            .filter(|(_, y)| !y.is_nan())
            .map(|(x, y)| format!("{x} {y}\n"))
            .collect();
        std::fs::write(&data, rows).expect("write plot data");
        plots.push(format!(
            "'{}' using 1:2 with linespoints lw 2 title '{name}'",
            data.display()
        ));
    }
    script.push_str(&plots.join(", "));
    script.push('\n');
    let gp = dir.path().join("plot.gp");
    std::fs::write(&gp, script).expect("write plot script");
    match Command::new("gnuplot").arg(&gp).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("gnuplot failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => eprintln!("gnuplot not runnable ({e}): run `cargo xtask setup`"),
    }
}
