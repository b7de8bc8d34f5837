//! The services section of the report: Markdown tables, targets, JSON, and the plots' series.

use std::time::Duration;

use petrel_testbed::stats::{median, percentile_ms};
use serde_json::{Value, json};

use super::{
    CONCURRENCY, Opts, Step,
    measure::{Sync, VARIANTS},
};
use crate::report::{Section, Target, num};

pub(super) fn report(steps: &[Step], big: &Sync, opts: &Opts) -> Section {
    let mut md = datapath_md(steps, opts);
    md.push_str(&control_plane_md(steps, big, opts));
    md.push_str(&endpoint_change_md(steps));
    md.push_str(&conntrack_md(steps));
    Section {
        md,
        json: json!({
            "steps": steps_json(steps),
            "big": {"services": opts.big, "petrel": big.json()},
            "concurrency": CONCURRENCY, "secs": opts.secs, "rounds": opts.rounds,
            "kube_proxy_ipvs": "not measured: kernel without IP_VS",
            "kube_proxy_iptables_variant": opts.xtables.name(),
        }),
        targets: targets(steps, big, opts),
    }
}

/// The service datapath table: every variant at every scale.
fn datapath_md(steps: &[Step], opts: &Opts) -> String {
    let mut md = String::from("### Service datapath\n\n");
    md.push_str(&format!(
        "New connections (connect, one request and answer, close) and round trips on kept \
         connections from a client pod through a ClusterIP to 10 pods on the same node, {CONCURRENCY} \
         at a time, {} s each, median of {} interleaved rounds; p50/p99 per operation. kube-proxy \
         runs iptables-{}. `retrans/1k` is the TCP segments the client retransmitted (loss probes \
         included) per 1000 new connections: a tail made of lost packets shows there.\n\n\
         | services | variant | conn/s | vs direct | conn p50 ms | conn p99 ms | retrans/1k | rr/s | rr p50 ms | rr p99 ms | errors | backends |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        opts.secs,
        opts.rounds,
        opts.xtables.name()
    ));
    for s in steps {
        let direct = median(&s.figures[0].conn_rate);
        for (v, f) in VARIANTS.iter().zip(&s.figures) {
            let rate = median(&f.conn_rate);
            md.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} | {} | {:.1} | {} | {} | {} | {} | {} |\n",
                s.services,
                v.name,
                num(rate),
                rate / direct,
                num(median(&f.conn_p50)),
                num(median(&f.conn_p99)),
                f.conn_retrans_per_1k(),
                num(median(&f.rr_rate)),
                num(median(&f.rr_p50)),
                num(median(&f.rr_p99)),
                f.errors,
                f.backends
            ));
        }
    }
    md.push_str(
        "\nkube-proxy IPVS mode: not measured. This machine's kernel is built without IP_VS \
         (no /proc/net/ip_vs, no loadable modules), so kube-proxy v1.20.2 cannot run it here.\n",
    );
    md
}

/// The full-sync table, and petrel alone at `opts.big` services.
fn control_plane_md(steps: &[Step], big: &Sync, opts: &Opts) -> String {
    let mut md = String::new();
    md.push_str("\n### Control plane\n\nFull sync: the proxy started (its datapath cleaned first) with N services x 10 endpoints already in the API server, until the newest service answers. `own sync` is the proxy's own `kubeproxy_sync_proxy_rules_duration_seconds` (sum over count syncs).\n\n\
         | services | created in s | petrel sync s | petrel own sync s (n) | petrel peak RSS MiB | kube-proxy sync s | kube-proxy own sync s (n) | kube-proxy peak RSS MiB | iptables rules | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|\n");
    for s in steps {
        md.push_str(&format!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} ({}) | {} | {} | {:.1}x |\n",
            s.services,
            num(s.create_secs),
            num(s.petrel.secs),
            num(s.petrel.own_sum),
            s.petrel.own_count,
            num(s.petrel.peak_rss_mib),
            num(s.kube_proxy.secs),
            num(s.kube_proxy.own_sum),
            s.kube_proxy.own_count,
            num(s.kube_proxy.peak_rss_mib),
            s.kube_proxy.rules.unwrap_or(0),
            s.kube_proxy.secs / s.petrel.secs
        ));
    }
    md.push_str(&format!(
        "\npetrel alone at {} services x 10 endpoints (standalone mode: read from one manifest file, not from the API server): full sync {} s from the agent's start, own sync {} s ({} syncs), peak RSS {} MiB.\n",
        opts.big,
        num(big.secs),
        num(big.own_sum),
        big.own_count,
        num(big.peak_rss_mib)
    ));
    md
}

/// The endpoint-change table (scales where it was measured).
/// petrel's conntrack after each scale's datapath run.
fn conntrack_md(steps: &[Step]) -> String {
    let mut md = String::from(
        "\n### petrel conntrack\n\nAfter each scale's datapath run: entries in CT_V2 (two per \
         connection) against its capacity, one garbage-collector sweep over them (the agent's \
         sweep, on the same pins), and the agent's CPU time during the run.\n\n\
         | services | entries | fill | sweep ms | entries swept/s | agent CPU s | run s |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for s in steps {
        let c = &s.ct;
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.1} | {} | {:.2} | {:.0} |\n",
            s.services,
            c.entries,
            c.entries as f64 / c.capacity.max(1) as f64,
            c.sweep_secs * 1e3,
            num(c.entries as f64 / c.sweep_secs.max(1e-9)),
            c.agent_cpu_secs,
            c.run_secs
        ));
    }
    md
}

fn endpoint_change_md(steps: &[Step]) -> String {
    let mut md = String::new();
    md.push_str("\nEndpoint change: the one endpoint of a service moves to another pod (petrel: EndpointSlice write; kube-proxy: Endpoints write, each proxy reads only its own), from the API write until the client's new connections reach the new pod; changes spaced past each proxy's minimum sync interval (petrel 0.2 s, kube-proxy 1.1 s).\n\n\
         | services | petrel p50 ms | petrel p99 ms | changes | kube-proxy p50 ms | kube-proxy p99 ms | changes |\n|---|---|---|---|---|---|---|\n");
    for s in steps {
        if let Some((p, k)) = &s.churn {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                s.services,
                num(percentile_ms(p, 50.0)),
                num(percentile_ms(p, 99.0)),
                p.len(),
                num(percentile_ms(k, 50.0)),
                num(percentile_ms(k, 99.0)),
                k.len()
            ));
        }
    }
    md
}

/// The targets for services, from this run's figures.
fn targets(steps: &[Step], big: &Sync, opts: &Opts) -> Vec<Target> {
    let first = steps.first().expect("a scale");
    let last = steps.last().expect("a scale");
    let rate = |s: &Step, i: usize| median(&s.figures[i].conn_rate);
    let mut targets = Vec::new();
    for s in [first, last] {
        for i in [1, 2] {
            targets.push(Target::at_least(
                &format!(
                    "{} conn/s / direct, {} services",
                    VARIANTS[i].name, s.services
                ),
                rate(s, i) / rate(s, 0),
                0.97,
            ));
        }
    }
    for i in [1, 2] {
        targets.push(Target::at_least(
            &format!(
                "{} conn/s / kube-proxy iptables, {} services",
                VARIANTS[i].name, last.services
            ),
            rate(last, i) / rate(last, 3),
            3.0,
        ));
    }
    targets.push(Target::at_most(
        &format!(
            "petrel full sync / kube-proxy iptables full sync, {} services",
            last.services
        ),
        last.petrel.secs / last.kube_proxy.secs,
        0.05,
    ));
    targets.push(Target::at_most(
        &format!("petrel full sync s, {} services", opts.big),
        big.secs,
        10.0,
    ));
    targets.push(Target::at_most(
        &format!("petrel agent peak RSS MiB, {} services", opts.big),
        big.peak_rss_mib,
        256.0,
    ));
    if let Some(s) = steps.iter().rev().find(|s| s.churn.is_some()) {
        let (p, _) = s.churn.as_ref().expect("found above");
        targets.push(Target::at_most(
            &format!("petrel endpoint change p99 ms, {} services", s.services),
            percentile_ms(p, 99.0),
            50.0,
        ));
    }
    targets
}

/// Every scale step, as the JSON report (and the plots) read it.
fn steps_json(steps: &[Step]) -> Vec<Value> {
    steps
        .iter()
        .map(|s| {
            let variants: Vec<Value> = VARIANTS
                .iter()
                .zip(&s.figures)
                .map(|(v, f)| {
                    let mut j = f.json();
                    j["variant"] = json!(v.name);
                    j
                })
                .collect();
            let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>();
            json!({
                "services": s.services,
                "create_secs": s.create_secs,
                "full_sync": {"petrel": s.petrel.json(), "kube_proxy_iptables": s.kube_proxy.json()},
                "endpoint_change_ms": s.churn.as_ref().map(|(p, k)| json!({"petrel": ms(p), "kube_proxy_iptables": ms(k)})),
                "datapath": variants,
                "conntrack": {
                    "entries": s.ct.entries, "capacity": s.ct.capacity,
                    "sweep_secs": s.ct.sweep_secs, "agent_cpu_secs": s.ct.agent_cpu_secs,
                    "run_secs": s.ct.run_secs,
                },
            })
        })
        .collect()
}

/// [(services, f(step))] over the scale steps of a finished section.
fn points(section: &Section, f: impl Fn(&Value) -> Option<f64>) -> Vec<(f64, f64)> {
    section.json["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let n = s["services"].as_f64().unwrap_or(f64::NAN);
            (n, f(s).unwrap_or(f64::NAN))
        })
        .collect()
}

/// (variant, [(services, new connections per second)]) for the scaling plot.
pub fn rate_series(section: &Section) -> Vec<(String, Vec<(f64, f64)>)> {
    VARIANTS
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let pts = points(section, |s| s["datapath"][i]["conn_per_sec"].as_f64());
            (v.name.to_string(), pts)
        })
        .collect()
}

/// (proxy, [(services, full sync seconds)]) for the sync plot.
pub fn sync_series(section: &Section) -> Vec<(String, Vec<(f64, f64)>)> {
    [
        ("petrel", "petrel"),
        ("kube-proxy iptables", "kube_proxy_iptables"),
    ]
    .into_iter()
    .map(|(name, key)| {
        let pts = points(section, |s| s["full_sync"][key]["secs"].as_f64());
        (name.to_string(), pts)
    })
    .collect()
}
