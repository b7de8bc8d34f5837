//! `cargo xtask conformance`: the upstream `[sig-network] Services` and `[sig-network] Networking`
//! e2e tests (e2e.test v1.20.2, built from the same Debian tree as the cluster) on two real 2-node
//! clusters at once: one with petrel installed by its DaemonSet, one with the usual baseline
//! (kube-proxy in iptables mode and Debian's bridge + host-local CNI plugins). The JUnit reports
//! are compared test by test in results/conformance.md and results/conformance.json, and the
//! README's table (between its `conformance` markers) is replaced by the new one.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, time::Instant};

use anyhow::{Context as _, bail};

use crate::{cluster, setup::Env};

/// What e2e.test runs: the two suites ...
const FOCUS: &str = r"\[sig-network\] (Services|Networking) ";
/// ... minus what needs more than this machine has or is not meant for a shared run (the
/// skips the upstream recipe uses). Every entry is a literal string (see `in_scope`).
const SKIP: &[&str] = &[
    "[Slow]",
    "[Serial]",
    "[Disruptive]",
    "[Flaky]",
    "[Feature:",
    "LoadBalancer",
    "ESIPP",
    "SCTP",
];
const SUITES: &[&str] = &["[sig-network] Services ", "[sig-network] Networking "];
const NODES: u32 = 2;

/// The two runs: column name, cluster name, whether petrel is installed.
const RUNS: &[(&str, &str, bool)] = &[("petrel", "cfp", true), ("kube-proxy", "cfk", false)];

/// The README section the table replaces.
const BEGIN: &str = "<!-- conformance:begin -->";
const END: &str = "<!-- conformance:end -->";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip,
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "fail",
            Outcome::Skip => "skip",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    pub outcome: Outcome,
    pub secs: f64,
}

pub fn run(env: &Env, root: &Path) -> anyhow::Result<()> {
    crate::require_root("cargo xtask conformance")?;
    let started = Instant::now();
    build(env, root)?;
    cluster::build_images(env, root)?;
    let out = env.target_dir.join("conformance");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    // Both runs at once (about 25 minutes for the pair instead of twice that); each cluster is
    // in namespaces, cgroups and folders of its own.
    let results: Vec<anyhow::Result<BTreeMap<String, Case>>> = std::thread::scope(|s| {
        let handles: Vec<_> = RUNS
            .iter()
            .map(|&(column, name, petrel)| {
                let dir = out.join(column);
                s.spawn(move || one_run(env, root, name, petrel, &dir))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a run panicked")))
            .collect()
    });
    let mut columns = vec![];
    for (&(column, _, _), r) in RUNS.iter().zip(results) {
        columns.push((column, r.with_context(|| format!("the {column} run"))?));
    }
    let date = crate::output_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?;
    let table = Table { columns, date };
    let results_dir = root.join("results");
    fs::create_dir_all(&results_dir)?;
    fs::write(results_dir.join("conformance.md"), table.markdown(true))?;
    fs::write(results_dir.join("conformance.json"), table.json())?;
    let readme = root.join("README.md");
    let text = fs::read_to_string(&readme)?;
    fs::write(&readme, replace_section(&text, &table.markdown(false))?)?;
    eprintln!(
        "conformance: {} (results/conformance.md, .json; README updated) in {:.0} min",
        table.summary_line(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// e2e.test, agnhost (static) and petrel-kubedns, built once in setup's kube tree.
fn build(env: &Env, root: &Path) -> anyhow::Result<()> {
    let script = root.join("xtask/scripts/build-kube.sh");
    let work = env.kube_bin.join("../work");
    crate::run(
        env,
        "nice",
        &[
            "-n",
            "10",
            "bash",
            &script.to_string_lossy(),
            &env.kube_bin.to_string_lossy(),
            &work.to_string_lossy(),
            "test/e2e/e2e.test",
            "test/images/agnhost",
            "cmd/petrel-kubedns",
        ],
    )
}

/// One cluster: up, petrel or the baseline, e2e.test, down (also when a step failed).
fn one_run(
    env: &Env,
    root: &Path,
    name: &str,
    petrel: bool,
    dir: &Path,
) -> anyhow::Result<BTreeMap<String, Case>> {
    let _ = cluster::cluster_sh(env, root, name, &["down"]);
    let result = run_on(env, root, name, petrel, dir);
    cluster::cluster_sh(env, root, name, &["down"])?;
    result
}

fn run_on(
    env: &Env,
    root: &Path,
    name: &str,
    petrel: bool,
    dir: &Path,
) -> anyhow::Result<BTreeMap<String, Case>> {
    cluster::up_named(env, root, name, NODES, petrel)?;
    if !petrel {
        cluster::cluster_sh(env, root, name, &["baseline"])?;
    }
    let dir_s = dir.to_string_lossy();
    cluster::cluster_sh(env, root, name, &["e2e", &dir_s, FOCUS, &skip_regex()])?;
    let xml = fs::read_to_string(dir.join("junit_01.xml"))
        .with_context(|| format!("reading {}", dir.display()))?;
    Ok(parse_junit(&xml))
}

fn skip_regex() -> String {
    SKIP.iter()
        .map(|s| {
            s.chars().fold(String::new(), |mut acc, c| {
                if "[]().*+?|\\{}^$".contains(c) {
                    acc.push('\\');
                }
                acc.push(c);
                acc
            })
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Whether test `name` is one the run is about (Ginkgo reports every spec of the binary, the
/// ones left out by focus and skip as skipped).
fn in_scope(name: &str) -> bool {
    SUITES.iter().any(|s| name.starts_with(s)) && !SKIP.iter().any(|s| name.contains(s))
}

/// The test cases of a Ginkgo v1 JUnit report that are in scope: name -> outcome.
pub fn parse_junit(xml: &str) -> BTreeMap<String, Case> {
    let mut cases = BTreeMap::new();
    let mut rest = xml;
    while let Some(at) = rest.find("<testcase ") {
        rest = &rest[at..];
        let head_end = rest.find('>').unwrap_or(rest.len());
        let head = &rest[..head_end];
        let self_closed = head.ends_with('/');
        let (body, next) = if self_closed {
            ("", head_end)
        } else {
            match rest.find("</testcase>") {
                Some(e) => (&rest[head_end..e], e),
                None => (&rest[head_end..], rest.len()),
            }
        };
        let name = unescape(&attr(head, "name").unwrap_or_default());
        let secs = attr(head, "time")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        let outcome = if let Some(f) = body.find("<failure").or_else(|| body.find("<error")) {
            let tag = &body[f..];
            let open_end = tag.find('>').unwrap_or(tag.len());
            let mut msg = attr(&tag[..open_end], "message").unwrap_or_default();
            if msg.trim().is_empty() {
                let inner = &tag[(open_end + 1).min(tag.len())..];
                let close = inner.find("</").unwrap_or(inner.len());
                msg = inner[..close].to_string();
            }
            Outcome::Fail(unescape(&msg).trim().to_string())
        } else if body.contains("<skipped") {
            Outcome::Skip
        } else {
            Outcome::Pass
        };
        if in_scope(&name) {
            cases.insert(name, Case { outcome, secs });
        }
        rest = &rest[next.max(1)..];
    }
    cases
}

fn attr(head: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=\"");
    let at = head.find(&pat)? + pat.len();
    let end = head[at..].find('"')?;
    Some(head[at..at + end].to_string())
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(end) = rest.find(';') else { break };
        let ent = &rest[1..end];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

pub struct Table {
    pub columns: Vec<(&'static str, BTreeMap<String, Case>)>,
    pub date: String,
}

impl Table {
    fn names(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self.columns.iter().flat_map(|(_, c)| c.keys()).collect();
        names.sort();
        names.dedup();
        names
    }

    fn outcome<'a>(&'a self, column: usize, name: &str) -> Option<&'a Outcome> {
        self.columns[column].1.get(name).map(|c| &c.outcome)
    }

    /// Tests petrel (column 0) fails and the baseline (column 1) passes.
    fn regressions(&self) -> Vec<(&String, &str)> {
        self.names()
            .into_iter()
            .filter_map(|n| match (self.outcome(0, n), self.outcome(1, n)) {
                (Some(Outcome::Fail(m)), Some(Outcome::Pass)) => Some((n, m.as_str())),
                _ => None,
            })
            .collect()
    }

    fn counts(&self, column: usize) -> (usize, usize, usize) {
        let c = &self.columns[column].1;
        let n = |w: &str| c.values().filter(|x| x.outcome.word() == w).count();
        (n("pass"), n("fail"), n("skip"))
    }

    pub fn summary_line(&self) -> String {
        let per: Vec<String> = (0..self.columns.len())
            .map(|i| {
                let (p, f, s) = self.counts(i);
                format!("{}: {p} pass, {f} fail, {s} skip", self.columns[i].0)
            })
            .collect();
        format!(
            "{}; {} failing with petrel only",
            per.join("; "),
            self.regressions().len()
        )
    }

    /// The table; `full` adds the failure messages of petrel-only failures.
    pub fn markdown(&self, full: bool) -> String {
        let mut s = String::new();
        if full {
            s.push_str("# Upstream [sig-network] e2e: petrel and kube-proxy side by side\n\n");
            s.push_str("Written by `cargo xtask conformance`; do not edit.\n\n");
        }
        let _ = writeln!(
            s,
            "e2e.test v1.20.2, `--ginkgo.focus='{FOCUS}'` minus {}, on 2-node v1.20.2 clusters \
             (`cargo xtask cluster`), run {}. petrel: installed by its DaemonSet, no kube-proxy. \
             kube-proxy: v1.20.2 in iptables mode with Debian's bridge + host-local CNI plugins. \
             {}.\n",
            SKIP.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            self.date,
            self.summary_line()
        );
        s.push_str("| Test |");
        for (c, _) in &self.columns {
            let _ = write!(s, " {c} |");
        }
        s.push_str("\n|---|");
        for _ in &self.columns {
            s.push_str("---|");
        }
        s.push('\n');
        for n in self.names() {
            let _ = write!(s, "| {} |", n.replace('|', "\\|"));
            for i in 0..self.columns.len() {
                let _ = write!(s, " {} |", self.outcome(i, n).map_or("-", Outcome::word));
            }
            s.push('\n');
        }
        let regressions = self.regressions();
        if full && !regressions.is_empty() {
            s.push_str("\n## Failing with petrel, passing with kube-proxy\n");
            for (n, m) in regressions {
                let _ = write!(s, "\n### {n}\n\n```\n{m}\n```\n");
            }
        } else if !regressions.is_empty() {
            s.push_str(
                "\nThe failure message of each test petrel fails and kube-proxy passes is in \
                 [results/conformance.md](results/conformance.md).\n",
            );
        }
        s
    }

    pub fn json(&self) -> String {
        let mut s = String::from("{\n");
        let _ = writeln!(s, "  \"date\": {},", json_str(&self.date));
        let _ = writeln!(s, "  \"kubernetes\": \"v1.20.2\",");
        let _ = writeln!(s, "  \"nodes\": {NODES},");
        let _ = writeln!(s, "  \"focus\": {},", json_str(FOCUS));
        let _ = writeln!(s, "  \"skip\": {},", json_str(&skip_regex()));
        s.push_str("  \"summary\": {");
        for i in 0..self.columns.len() {
            let (p, f, k) = self.counts(i);
            let _ = write!(
                s,
                "{}\n    {}: {{\"pass\": {p}, \"fail\": {f}, \"skip\": {k}}}",
                if i == 0 { "" } else { "," },
                json_str(self.columns[i].0)
            );
        }
        s.push_str("\n  },\n  \"tests\": [");
        for (j, n) in self.names().into_iter().enumerate() {
            let _ = write!(
                s,
                "{}\n    {{\"name\": {}",
                if j == 0 { "" } else { "," },
                json_str(n)
            );
            for (c, cases) in &self.columns {
                match cases.get(n) {
                    None => {
                        let _ = write!(s, ", {}: null", json_str(c));
                    }
                    Some(case) => {
                        let _ = write!(
                            s,
                            ", {}: {{\"result\": \"{}\", \"seconds\": {:.1}",
                            json_str(c),
                            case.outcome.word(),
                            case.secs
                        );
                        if let Outcome::Fail(m) = &case.outcome {
                            let _ = write!(s, ", \"message\": {}", json_str(m));
                        }
                        s.push('}');
                    }
                }
            }
            s.push('}');
        }
        s.push_str("\n  ]\n}\n");
        s
    }
}

fn json_str(v: &str) -> String {
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// `readme` with the text between the conformance markers replaced by `table`.
fn replace_section(readme: &str, table: &str) -> anyhow::Result<String> {
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        bail!("README.md lacks the {BEGIN} ... {END} markers");
    };
    if e < b {
        bail!("README.md: {END} before {BEGIN}");
    }
    Ok(format!("{}{BEGIN}\n{table}{}", &readme[..b], &readme[e..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
  <testsuite name="Kubernetes e2e suite" tests="4" failures="1" errors="0" time="10">
      <testcase name="[sig-network] Services should serve a basic endpoint from pods  [Conformance]" classname="Kubernetes e2e suite" time="12.5"></testcase>
      <testcase name="[sig-network] Services should be rejected when no endpoints exist" classname="Kubernetes e2e suite" time="3.0">
          <failure type="Failure">/go/src/k8s.io/kubernetes/test/e2e/network/service.go:123&#xA;Unexpected error: &lt;*errors.errorString&gt; &quot;timed out&quot;</failure>
          <system-out>log</system-out>
      </testcase>
      <testcase name="[sig-network] Networking should check kube-proxy urls" classname="Kubernetes e2e suite" time="0">
          <skipped></skipped>
      </testcase>
      <testcase name="[sig-network] Services should work after restarting kube-proxy [Disruptive]" classname="Kubernetes e2e suite" time="0">
          <skipped></skipped>
      </testcase>
      <testcase name="[sig-storage] Volumes should mount" classname="Kubernetes e2e suite" time="0"><skipped></skipped></testcase>
  </testsuite>"#;

    #[test]
    fn junit_cases_in_scope_with_their_outcome_and_message() {
        let cases = parse_junit(REPORT);
        let names: Vec<&str> = cases.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "[sig-network] Networking should check kube-proxy urls",
                "[sig-network] Services should be rejected when no endpoints exist",
                "[sig-network] Services should serve a basic endpoint from pods  [Conformance]",
            ]
        );
        assert_eq!(
            cases["[sig-network] Services should be rejected when no endpoints exist"].outcome,
            Outcome::Fail(
                "/go/src/k8s.io/kubernetes/test/e2e/network/service.go:123\nUnexpected error: \
                 <*errors.errorString> \"timed out\""
                    .into()
            )
        );
        assert_eq!(
            cases["[sig-network] Networking should check kube-proxy urls"].outcome,
            Outcome::Skip
        );
        let pass =
            &cases["[sig-network] Services should serve a basic endpoint from pods  [Conformance]"];
        assert_eq!((pass.outcome.clone(), pass.secs), (Outcome::Pass, 12.5));
    }

    #[test]
    fn the_table_names_petrel_only_failures_with_their_message() {
        let petrel = parse_junit(REPORT);
        let mut baseline = petrel.clone();
        for c in baseline.values_mut() {
            if matches!(c.outcome, Outcome::Fail(_)) {
                c.outcome = Outcome::Pass;
            }
        }
        let t = Table {
            columns: vec![("petrel", petrel), ("kube-proxy", baseline)],
            date: "2026-12-02 15:00 UTC".into(),
        };
        let md = t.markdown(true);
        assert!(md.contains(
            "| [sig-network] Services should be rejected when no endpoints exist | fail | pass |"
        ));
        assert!(md.contains("## Failing with petrel, passing with kube-proxy"));
        assert!(md.contains("\"timed out\""));
        assert!(t.summary_line().ends_with("1 failing with petrel only"));
        let json = t.json();
        assert!(
            json.contains(r#""petrel": {"result": "fail", "seconds": 3.0, "message": "/go/src"#)
        );
        assert!(json.contains(r#""kube-proxy": {"pass": 2, "fail": 0, "skip": 1}"#));
        let readme = format!("a\n{BEGIN}\nold\n{END}\nb\n");
        let new = replace_section(&readme, "new\n").expect("markers");
        assert_eq!(new, format!("a\n{BEGIN}\nnew\n{END}\nb\n"));
    }

    #[test]
    fn the_skip_regex_escapes_its_literals() {
        assert!(skip_regex().starts_with(r"\[Slow\]|\[Serial\]|"));
        assert!(skip_regex().contains(r"|\[Feature:|LoadBalancer|"));
    }
}
