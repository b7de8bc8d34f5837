//! The agent's side of connection tracking: the settings written to the datapath at start, the
//! NAT port range checked against the host's ephemeral ports, and the garbage collector, a
//! thread of its own (a sweep is blocking map work: a system call or two per entry).
//!
//! The collector sweeps at an interval that adapts (petrel_datapath::conntrack::next_interval),
//! early when the datapath counted a connection refused for a full map, and soon after a sync
//! that removed something an entry may name (a backend, a frontend, a backend's place in a
//! frontend), so flows to a removed endpoint go when it goes, as kube-proxy's UDP cleanup does.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use petrel_common::stat;
use petrel_datapath::{
    conntrack::{self, IntervalBounds, SweepReport},
    maps::{MapStore, MapsError, PinnedMaps},
};

use crate::{
    cli::PortRange,
    metrics::{MapLabel, Metrics, ReasonLabel},
};

/// How often the collector looks at the datapath's full-map counter between sweeps.
const TICK: Duration = Duration::from_secs(1);
/// Sweeps asked for by syncs come at most this often (a burst of endpoint changes is one sweep).
const KICK_GAP: Duration = Duration::from_secs(1);

/// When the next sweep is due.
#[derive(Debug)]
pub struct Schedule {
    pub bounds: IntervalBounds,
    pub interval: Duration,
    last: Option<Instant>,
}

impl Schedule {
    pub fn new(bounds: IntervalBounds) -> Schedule {
        Schedule {
            bounds,
            interval: bounds.initial(),
            last: None,
        }
    }

    /// Whether to sweep at `now`: the first time, once the interval ran out, after a kick (at
    /// most every `KICK_GAP`), or when the map refused connections since the last sweep (at
    /// most every minimum interval).
    pub fn due(&self, now: Instant, kicked: bool, refusing: bool) -> bool {
        let Some(last) = self.last else {
            return true;
        };
        let since = now.saturating_duration_since(last);
        since >= self.interval
            || (kicked && since >= KICK_GAP)
            || (refusing && since >= self.bounds.min)
    }

    /// Records a sweep that started at `at` and went as `report` says.
    pub fn swept(&mut self, at: Instant, report: Option<&SweepReport>) {
        self.last = Some(at);
        if let Some(r) = report {
            self.interval = conntrack::next_interval(self.interval, r, self.bounds);
        }
    }
}

/// Asks the collector for a sweep soon. Cheap; never blocks.
#[derive(Clone, Debug)]
pub struct Kick(mpsc::Sender<()>);

impl Kick {
    pub fn kick(&self) {
        let _ = self.0.send(());
    }
}

/// Starts the collector on its own thread, over its own handles on the pins in `maps_dir`. It
/// stops when every `Kick` is dropped.
pub fn spawn(
    maps_dir: &Path,
    max_interval: Duration,
    metrics: Arc<Metrics>,
) -> Result<Kick, MapsError> {
    let store = PinnedMaps::open(maps_dir)?;
    let (tx, rx) = mpsc::channel();
    let dir: PathBuf = maps_dir.to_path_buf();
    std::thread::Builder::new()
        .name("ct-gc".into())
        .spawn(move || {
            run(
                store,
                &rx,
                IntervalBounds::up_to(max_interval),
                &metrics,
                &dir,
            )
        })
        .expect("spawning the conntrack collector thread");
    Ok(Kick(tx))
}

fn run(
    mut store: PinnedMaps,
    kicks: &mpsc::Receiver<()>,
    bounds: IntervalBounds,
    metrics: &Metrics,
    dir: &Path,
) {
    let mut schedule = Schedule::new(bounds);
    let mut pending = false;
    let mut refused_at_last = store.stat(stat::DROP_CT_FULL).unwrap_or(0);
    tracing::info!(maps = %dir.display(), max_interval_s = bounds.max.as_secs(), "conntrack garbage collector started");
    loop {
        match kicks.recv_timeout(TICK) {
            Ok(()) => pending = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while kicks.try_recv().is_ok() {}
        let refused = store.stat(stat::DROP_CT_FULL).unwrap_or(refused_at_last);
        let now = Instant::now();
        if !schedule.due(now, pending, refused > refused_at_last) {
            continue;
        }
        pending = false;
        refused_at_last = refused;
        let report = conntrack::sweep(&mut store, conntrack::monotonic_ns());
        let took = now.elapsed();
        match &report {
            Ok(r) => record(metrics, r, took),
            Err(e) => tracing::warn!(error = %e, "conntrack sweep failed; retried at the next"),
        }
        schedule.swept(now, report.as_ref().ok());
        metrics.ct_gc_interval.set(schedule.interval.as_secs_f64());
    }
}

fn record(metrics: &Metrics, r: &SweepReport, took: Duration) {
    metrics.ct_gc_runs.inc();
    metrics.ct_gc_duration.observe(took.as_secs_f64());
    metrics.ct_entries.set(r.remaining as i64);
    metrics.ct_fill.set(r.fill());
    metrics
        .map_fill
        .get_or_create(&MapLabel {
            map: petrel_datapath::maps::CONNTRACK.into(),
        })
        .set(r.fill());
    for (reason, n) in &r.removed {
        metrics
            .ct_gc_removed
            .get_or_create(&ReasonLabel {
                reason: reason.name().into(),
            })
            .inc_by(*n as u64);
    }
    let removed: usize = r.removed.values().sum();
    if removed > 0 {
        tracing::debug!(
            entries = r.entries,
            removed,
            skipped = r.skipped,
            took_ms = took.as_millis() as u64,
            reasons = ?r.removed,
            "conntrack swept"
        );
    }
}

/// Every reason gets its series at start, so rates work from the first sweep.
pub fn register_reasons(metrics: &Metrics) {
    for r in conntrack::Reason::ALL {
        let _ = metrics.ct_gc_removed.get_or_create(&ReasonLabel {
            reason: r.name().into(),
        });
    }
}

/// "32768\t60999" (ip_local_port_range) -> the range.
fn parse_local_range(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(min)), Some(Ok(max))) = (it.next(), it.next()) else {
        return None;
    };
    Some(PortRange { min, max })
}

/// "8080,9000-9100" (ip_local_reserved_ports) -> the ranges.
fn parse_reserved(text: &str) -> Vec<PortRange> {
    text.trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            Some(PortRange {
                min: a.parse().ok()?,
                max: b.parse().ok()?,
            })
        })
        .collect()
}

/// The ports of `nat` that host sockets may take as ephemeral ports: in `local`, and not in
/// any of `reserved`.
pub fn exposed_ports(nat: PortRange, local: PortRange, reserved: &[PortRange]) -> Vec<PortRange> {
    let Some(overlap) = nat.overlap(local) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut next = u32::from(overlap.min);
    let mut reserved: Vec<PortRange> = reserved.to_vec();
    reserved.sort_by_key(|r| r.min);
    for r in reserved {
        if u32::from(r.max) < next || r.min > overlap.max {
            continue;
        }
        if u32::from(r.min) > next {
            out.push(PortRange {
                min: u16::try_from(next).expect("below r.min, a u16"),
                max: r.min - 1,
            });
        }
        next = u32::from(r.max) + 1;
    }
    if next <= u32::from(overlap.max) {
        out.push(PortRange {
            min: u16::try_from(next).expect("at most overlap.max, a u16"),
            max: overlap.max,
        });
    }
    out
}

/// A warning when host sockets can take ports of the NAT range (the range is then not petrel's
/// alone: a host connection and a translated flow could pick the same port). The sysctls are
/// read, never changed.
pub fn check_nat_ports(proc_sys_net: &Path, nat: PortRange) -> Option<String> {
    let local_path = proc_sys_net.join("ipv4/ip_local_port_range");
    let local = match std::fs::read_to_string(&local_path) {
        Ok(t) => parse_local_range(&t)?,
        Err(e) => {
            return Some(format!(
                "cannot read {} ({e}): cannot check that --nat-port-range {nat} is outside the host's ephemeral ports",
                local_path.display()
            ));
        }
    };
    let reserved = std::fs::read_to_string(proc_sys_net.join("ipv4/ip_local_reserved_ports"))
        .map(|t| parse_reserved(&t))
        .unwrap_or_default();
    let exposed = exposed_ports(nat, local, &reserved);
    if exposed.is_empty() {
        return None;
    }
    let list: Vec<String> = exposed.iter().map(ToString::to_string).collect();
    Some(format!(
        "--nat-port-range {nat} overlaps net.ipv4.ip_local_port_range {local} (ports {}): host sockets can take ports petrel hands out to translated flows; choose a range outside it",
        list.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use petrel_datapath::conntrack::Reason;

    use super::*;

    fn r(min: u16, max: u16) -> PortRange {
        PortRange { min, max }
    }

    #[test]
    fn the_host_s_ephemeral_ports_are_checked_minus_its_reserved_ones() {
        assert_eq!(parse_local_range("32768\t60999\n"), Some(r(32768, 60999)));
        assert_eq!(
            parse_reserved("8080,61000-61999\n"),
            [r(8080, 8080), r(61000, 61999)]
        );
        assert_eq!(parse_reserved("\n"), []);
        let local = r(32768, 64999);
        assert_eq!(exposed_ports(r(61000, 65535), r(32768, 60999), &[]), []);
        assert_eq!(
            exposed_ports(r(61000, 65535), local, &[]),
            [r(61000, 64999)]
        );
        assert_eq!(
            exposed_ports(r(61000, 65535), local, &[r(8080, 8080), r(62000, 62999)]),
            [r(61000, 61999), r(63000, 64999)]
        );
        assert_eq!(
            exposed_ports(r(61000, 65535), local, &[r(60000, 65535)]),
            []
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let ipv4 = dir.path().join("ipv4");
        std::fs::create_dir(&ipv4).expect("mkdir");
        std::fs::write(ipv4.join("ip_local_port_range"), "32768\t60999\n").expect("write");
        assert_eq!(check_nat_ports(dir.path(), r(61000, 65535)), None);
        let w = check_nat_ports(dir.path(), r(60000, 65535)).expect("overlap");
        assert!(
            w.contains("overlaps net.ipv4.ip_local_port_range 32768-60999 (ports 60000-60999)"),
            "{w}"
        );
    }

    fn report(entries: usize, removed: usize) -> SweepReport {
        SweepReport {
            entries,
            remaining: entries - removed,
            capacity: 1000,
            removed: BTreeMap::from([(Reason::Expired, removed)]),
            ..Default::default()
        }
    }

    #[test]
    fn sweeps_come_at_the_interval_soon_after_a_kick_and_early_when_the_map_refuses() {
        let bounds = IntervalBounds::up_to(Duration::from_secs(300));
        let mut s = Schedule::new(bounds);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert!(s.due(t0, false, false), "the first sweep runs at once");
        s.swept(t0, Some(&report(10, 0)));
        assert_eq!(s.interval, Duration::from_secs(90), "idle: longer");
        assert!(!s.due(at(89), false, false));
        assert!(s.due(at(90), false, false));
        assert!(!s.due(t0, true, false), "kicks are coalesced");
        assert!(s.due(at(1), true, false));
        assert!(
            !s.due(at(4), false, true),
            "refusals: not before the minimum"
        );
        assert!(s.due(at(5), false, true));
        // A sweep that failed keeps the interval.
        s.swept(at(5), None);
        assert_eq!(s.interval, Duration::from_secs(90));
        s.swept(at(6), Some(&report(800, 400)));
        assert!(s.interval < Duration::from_secs(90));
    }
}
