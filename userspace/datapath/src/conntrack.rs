//! Garbage collection of the conntrack map (CT_V2) and of session affinity.
//!
//! The datapath never evicts a conntrack entry (a plain hash map, so a flood of new flows cannot
//! push established ones out) and treats expired entries as absent; removing them is this
//! module's job, run by the agent. A sweep reads every entry, decides what goes and why
//! (`plan_ct`, `plan_affinity`: pure, tested on fake maps), then deletes, re-reading each entry
//! first so that nothing the datapath refreshed or re-created since the read is removed.
//!
//! Why an entry goes (`Reason`), checked per connection (its forward and reply entries, found
//! from each other with `CtValue::partner`) and always removed as a pair:
//! - `Expired`: the connection is over (`ct_connection_over`: both directions expired, or a RST
//!   went by and its short lifetime ran out);
//! - `Orphan`: the other direction's entry is missing (older than `ORPHAN_GRACE_S`: the datapath
//!   creates a pair in two inserts, reply first);
//! - `BackendGone`: the backend id is no longer in BACKENDS, or names another address;
//! - `ServiceGone`: the reverse-NAT id is no longer in REV_NAT, or names another frontend;
//! - `BackendLeft`: a UDP flow whose backend is no longer in its service's slots (kube-proxy's
//!   UDP conntrack cleanup: datagrams go to a current endpoint at once rather than to one that
//!   left, e.g. a pod that turned not-ready but still backs another service); TCP keeps its
//!   connection while the backend exists, as under kube-proxy;
//! - `Pressure`: the map is at least `PRESSURE_HIGH` full: unreplied connections (nothing came
//!   back, e.g. a SYN flood's), soonest-expiring first, until it is at most `PRESSURE_LOW` full.
//!   Replied connections are never taken for room (netfilter's early_drop makes the same choice),
//!   except closed ones: a connection closed by FINs both ways is kept for
//!   `CtLifetimes::tcp_time_wait` (its translated tuple stays claimed while the peer holds it in
//!   TIME_WAIT), but once the map is `TIME_WAIT_PRESSURE` full such connections whose last
//!   packet is older than `tcp_closing` go too, the longest idle first, down to that fill.
//!
//! Affinity entries go when their backend is no longer in the service's slots, when the service
//! is gone or has no affinity any more, or when their timeout ran out.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    time::Duration,
};

use petrel_common::{
    AffinityKey, AffinityValue, Backend, CT_DIR_FORWARD, CT_SEEN_FIN, CT_SEEN_RST, CtKey,
    CtLifetimes, CtValue, IPPROTO_TCP, IPPROTO_UDP, RevNat, SVC_F_AFFINITY, ServiceKey,
    ServiceValue, config, ct_connection_over,
};

use crate::maps::{MapStore, MapsError};

/// A lone entry younger than this (since its last packet) is left alone: its partner may be
/// about to be inserted.
pub const ORPHAN_GRACE_S: u32 = 10;
/// Fill ratio at which unreplied connections are removed to make room...
pub const PRESSURE_HIGH: f64 = 0.90;
/// ... and the fill ratio they are removed down to.
pub const PRESSURE_LOW: f64 = 0.80;
/// Fill ratio above which connections closed by FINs both ways are kept only `tcp_closing`
/// rather than `tcp_time_wait`: their claim on the translated tuple matters less than room for
/// new connections between two sweeps.
pub const TIME_WAIT_PRESSURE: f64 = 0.50;

/// Why the collector removed an entry (the `reason` label of
/// petrel_conntrack_gc_removed_total).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Expired,
    Orphan,
    BackendGone,
    BackendLeft,
    ServiceGone,
    Pressure,
    AffinityExpired,
    AffinityBackendGone,
    AffinityServiceGone,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Expired,
        Reason::Orphan,
        Reason::BackendGone,
        Reason::BackendLeft,
        Reason::ServiceGone,
        Reason::Pressure,
        Reason::AffinityExpired,
        Reason::AffinityBackendGone,
        Reason::AffinityServiceGone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Expired => "expired",
            Reason::Orphan => "orphan",
            Reason::BackendGone => "backend_gone",
            Reason::BackendLeft => "backend_left",
            Reason::ServiceGone => "service_gone",
            Reason::Pressure => "pressure",
            Reason::AffinityExpired => "affinity_expired",
            Reason::AffinityBackendGone => "affinity_backend_gone",
            Reason::AffinityServiceGone => "affinity_service_gone",
        }
    }

    /// Whether an entry read as `planned` and now found as `fresh` still goes for this reason:
    /// a packet since the read keeps an expired or orphaned connection (its expiry moved), a
    /// reply keeps a connection picked for room; a backend or service that is gone stays gone
    /// whatever the packets did, unless the entry now belongs to another connection.
    fn still_applies(self, planned: &CtValue, fresh: &CtValue) -> bool {
        let identity = |v: &CtValue| CtValue {
            expires_s: 0,
            seen: 0,
            ..*v
        };
        match self {
            Reason::Expired | Reason::Orphan => fresh == planned,
            Reason::Pressure => identity(fresh) == identity(planned) && fresh.seen == planned.seen,
            _ => identity(fresh) == identity(planned),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the collector needs to know of one service (by reverse-NAT id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceView {
    /// Backend ids in its slots, both scopes.
    pub backends: BTreeSet<u32>,
    /// Its sessionAffinity timeout, when it has affinity.
    pub affinity_timeout_s: Option<u32>,
}

/// The service side of the maps, as the collector reads it.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub backends: HashMap<u32, Backend>,
    pub rev_nats: HashMap<u32, RevNat>,
    pub services: HashMap<u32, ServiceView>,
}

impl Tables {
    pub fn new(
        backends: Vec<(u32, Backend)>,
        rev_nats: Vec<(u32, RevNat)>,
        services: &[(ServiceKey, ServiceValue)],
    ) -> Tables {
        let mut views: HashMap<u32, ServiceView> = HashMap::new();
        for (k, v) in services {
            let view = views.entry(v.rev_nat_id).or_default();
            if k.slot == 0 {
                if v.flags & SVC_F_AFFINITY != 0 {
                    view.affinity_timeout_s = Some(v.affinity_timeout_s);
                }
            } else {
                view.backends.insert(v.backend_id);
            }
        }
        Tables {
            backends: backends.into_iter().collect(),
            rev_nats: rev_nats.into_iter().collect(),
            services: views,
        }
    }

    /// Adds the slots of an earlier read of SERVICES: a backend counts as a member if either
    /// read saw it (a rewrite of a service's slots in place, e.g. two backends swapping slots,
    /// can hide one from a single read for a moment).
    pub fn add_members(&mut self, earlier: &[(ServiceKey, ServiceValue)]) {
        for (k, v) in earlier {
            if k.slot != 0 {
                if let Some(view) = self.services.get_mut(&v.rev_nat_id) {
                    view.backends.insert(v.backend_id);
                }
            }
        }
    }
}

/// Entries to remove together (a connection's pair, or a lone entry), as they were read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub reason: Reason,
    pub entries: Vec<(CtKey, CtValue)>,
}

/// What one conntrack sweep decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtPlan {
    /// Distinct entries read.
    pub entries: usize,
    pub deletions: Vec<Deletion>,
}

impl CtPlan {
    /// Entries the plan removes.
    pub fn removed(&self) -> usize {
        self.deletions.iter().map(|d| d.entries.len()).sum()
    }
}

/// A total order on keys, so plans do not depend on hash order.
fn order(k: &CtKey) -> (u32, u32, u16, u16, u8, u8) {
    (
        k.saddr_be, k.daddr_be, k.sport_be, k.dport_be, k.proto, k.dir,
    )
}

/// Seconds since the last packet of one direction: its expiry is that packet's time plus the
/// lifetime of what it has seen (0 when the clock is behind, e.g. an entry refreshed since
/// `now_s` was read).
fn idle_s(k: &CtKey, v: &CtValue, now_s: u32, lifetimes: &CtLifetimes) -> u32 {
    let last = v.expires_s.wrapping_sub(lifetimes.of(k.proto, v.seen));
    let idle = now_s.wrapping_sub(last) as i32;
    idle.max(0) as u32
}

/// Why a connection with both entries goes, if it does (rules other than pressure).
fn pair_reason(
    fwd_key: &CtKey,
    fwd: &CtValue,
    reply: &CtValue,
    tables: &Tables,
    now_s: u32,
) -> Option<Reason> {
    if ct_connection_over(fwd, Some(reply), now_s) {
        return Some(Reason::Expired);
    }
    if fwd.backend_id != 0 {
        match tables.backends.get(&fwd.backend_id) {
            Some(b) if b.addr_be == fwd.dst_addr_be && b.port_be == fwd.dst_port_be => {}
            _ => return Some(Reason::BackendGone),
        }
    }
    if fwd.rev_nat_id != 0 {
        // The forward key's destination is the frontend the flow was sent to.
        match tables.rev_nats.get(&fwd.rev_nat_id) {
            Some(r) if r.addr_be == fwd_key.daddr_be && r.port_be == fwd_key.dport_be => {}
            _ => return Some(Reason::ServiceGone),
        }
        if fwd_key.proto == IPPROTO_UDP && fwd.backend_id != 0 {
            if let Some(view) = tables.services.get(&fwd.rev_nat_id) {
                if !view.backends.contains(&fwd.backend_id) {
                    return Some(Reason::BackendLeft);
                }
            }
        }
    }
    None
}

/// Decides which conntrack entries go. `entries` may hold a key twice (a map iterated while the
/// datapath deletes restarts from its first key): the last value read wins. `capacity` is the
/// map's size in entries.
pub fn plan_ct(
    entries: &[(CtKey, CtValue)],
    tables: &Tables,
    now_s: u32,
    capacity: usize,
    lifetimes: &CtLifetimes,
) -> CtPlan {
    let all: HashMap<CtKey, CtValue> = entries.iter().copied().collect();
    let mut keys: Vec<&CtKey> = all.keys().collect();
    keys.sort_by_key(|k| order(k));
    let mut plan = CtPlan {
        entries: all.len(),
        deletions: Vec::new(),
    };
    let mut done: BTreeSet<(u32, u32, u16, u16, u8, u8)> = BTreeSet::new();
    // Connections that stay, for the pressure rules: (forward, reply). Unreplied ones, and
    // closed ones (FIN both ways) past the closing lifetime, with their idle seconds.
    let mut unreplied: Vec<[(CtKey, CtValue); 2]> = Vec::new();
    let mut lingering: Vec<(u32, [(CtKey, CtValue); 2])> = Vec::new();
    for k in keys {
        if done.contains(&order(k)) {
            continue;
        }
        let v = all[k];
        let pk = v.partner(k);
        // A pair only when each names the other.
        let partner = all
            .get(&pk)
            .filter(|pv| pv.partner(&pk) == *k)
            .map(|pv| (pk, *pv));
        done.insert(order(k));
        let Some((pk, pv)) = partner else {
            if v.expired(now_s) || idle_s(k, &v, now_s, lifetimes) >= ORPHAN_GRACE_S {
                plan.deletions.push(Deletion {
                    reason: Reason::Orphan,
                    entries: vec![(*k, v)],
                });
            }
            continue;
        };
        done.insert(order(&pk));
        let (fwd, reply) = if k.dir == CT_DIR_FORWARD {
            ((*k, v), (pk, pv))
        } else {
            ((pk, pv), (*k, v))
        };
        match pair_reason(&fwd.0, &fwd.1, &reply.1, tables, now_s) {
            Some(reason) => plan.deletions.push(Deletion {
                reason,
                entries: vec![fwd, reply],
            }),
            None if reply.1.seen == 0 => unreplied.push([fwd, reply]),
            None => {
                if let Some(idle) = time_wait_idle(&fwd, &reply, now_s, lifetimes) {
                    lingering.push((idle, [fwd, reply]));
                }
            }
        }
    }
    let mut remaining = plan.entries - plan.removed();
    let cap = capacity as f64;
    if remaining as f64 >= cap * PRESSURE_HIGH {
        // Soonest over first: the later expiry of the two directions.
        unreplied.sort_by_key(|[f, r]| {
            let left = |v: &CtValue| v.expires_s.wrapping_sub(now_s) as i32;
            (left(&f.1).max(left(&r.1)), order(&f.0))
        });
        make_room(&mut plan, &mut remaining, cap * PRESSURE_LOW, unreplied);
    }
    if remaining as f64 > cap * TIME_WAIT_PRESSURE {
        // The longest idle first.
        lingering.sort_by_key(|(idle, [f, _])| (std::cmp::Reverse(*idle), order(&f.0)));
        let pairs = lingering.into_iter().map(|(_, pair)| pair);
        make_room(&mut plan, &mut remaining, cap * TIME_WAIT_PRESSURE, pairs);
    }
    plan
}

/// Plans `pairs` (connections, in the order they should go) for removal under pressure until
/// `remaining` entries are at most `down_to`.
fn make_room(
    plan: &mut CtPlan,
    remaining: &mut usize,
    down_to: f64,
    pairs: impl IntoIterator<Item = [(CtKey, CtValue); 2]>,
) {
    for pair in pairs {
        if *remaining as f64 <= down_to {
            break;
        }
        *remaining -= 2;
        plan.deletions.push(Deletion {
            reason: Reason::Pressure,
            entries: pair.to_vec(),
        });
    }
}

/// For a TCP connection closed by a FIN each way (and no RST): seconds since its last packet,
/// if that is at least the closing lifetime (what it would have been kept without TIME_WAIT).
fn time_wait_idle(
    fwd: &(CtKey, CtValue),
    reply: &(CtKey, CtValue),
    now_s: u32,
    lifetimes: &CtLifetimes,
) -> Option<u32> {
    let closed = |v: &CtValue| v.seen & CT_SEEN_FIN != 0 && v.seen & CT_SEEN_RST == 0;
    if fwd.0.proto != IPPROTO_TCP || !closed(&fwd.1) || !closed(&reply.1) {
        return None;
    }
    let idle =
        idle_s(&fwd.0, &fwd.1, now_s, lifetimes).min(idle_s(&reply.0, &reply.1, now_s, lifetimes));
    (idle >= lifetimes.tcp_closing).then_some(idle)
}

/// Decides which affinity entries go, and why. `now_ns` is CLOCK_MONOTONIC (bpf_ktime_get_ns).
pub fn plan_affinity(
    entries: &[(AffinityKey, AffinityValue)],
    tables: &Tables,
    now_ns: u64,
) -> Vec<(AffinityKey, AffinityValue, Reason)> {
    let mut out = Vec::new();
    for (k, v) in entries {
        let reason = match tables.services.get(&k.rev_nat_id) {
            Some(ServiceView {
                backends,
                affinity_timeout_s: Some(timeout_s),
            }) => {
                // An entry used after `now_ns` was read is not expired.
                let idle = now_ns.saturating_sub(v.last_used_ns);
                if idle > u64::from(*timeout_s) * 1_000_000_000 {
                    Some(Reason::AffinityExpired)
                } else if !backends.contains(&v.backend_id)
                    || !tables.backends.contains_key(&v.backend_id)
                {
                    Some(Reason::AffinityBackendGone)
                } else {
                    None
                }
            }
            _ => Some(Reason::AffinityServiceGone),
        };
        if let Some(r) = reason {
            out.push((*k, *v, r));
        }
    }
    out.sort_by_key(|(k, _, _)| (k.rev_nat_id, k.kind, k.client));
    out
}

/// The lifetimes the datapath uses (its defaults where a CONFIG slot holds 0).
pub fn lifetimes(store: &impl MapStore) -> Result<CtLifetimes, MapsError> {
    let d = CtLifetimes::DEFAULT;
    let get = |slot, default| -> Result<u32, MapsError> {
        Ok(match store.config_get(slot)? {
            0 => default,
            v => v,
        })
    };
    Ok(CtLifetimes {
        tcp_established: get(config::CT_TCP_ESTABLISHED_S, d.tcp_established)?,
        tcp_syn: get(config::CT_TCP_SYN_S, d.tcp_syn)?,
        tcp_closing: get(config::CT_TCP_CLOSING_S, d.tcp_closing)?,
        tcp_time_wait: get(config::CT_TCP_TIME_WAIT_S, d.tcp_time_wait)?,
        other: get(config::CT_OTHER_S, d.other)?,
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the datapath's clock (bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Conntrack entries read, and left after the sweep.
    pub entries: usize,
    pub remaining: usize,
    /// The conntrack map's capacity in entries.
    pub capacity: usize,
    /// Entries removed, by reason (conntrack entries count one each).
    pub removed: BTreeMap<Reason, usize>,
    /// Planned removals skipped because the entry changed since it was read.
    pub skipped: usize,
    /// Affinity entries read.
    pub affinity_entries: usize,
}

impl SweepReport {
    pub fn fill(&self) -> f64 {
        self.remaining as f64 / self.capacity.max(1) as f64
    }

    /// Conntrack entries removed (affinity not counted).
    pub fn ct_removed(&self) -> usize {
        self.removed
            .iter()
            .filter(|(r, _)| !r.name().starts_with("affinity"))
            .map(|(_, n)| *n)
            .sum()
    }
}

/// One sweep over `store`: plans, then applies the plan, each entry re-read first.
///
/// WARNING: conntrack and affinity entries are read before the backends, reverse-NAT ids and
/// slots they are checked against. An entry can only name an id that existed when it was
/// created, and ids are never reused (next-fit over 32 bits), so a table read afterwards holds
/// every id that is still live; read the other way round, an entry created after the table
/// read would be taken for one whose backend is gone.
pub fn sweep(store: &mut impl MapStore, now_ns: u64) -> Result<SweepReport, MapsError> {
    let now_s = (now_ns / 1_000_000_000) as u32;
    let capacity = store.ct_capacity()? as usize;
    let lifetimes = lifetimes(store)?;
    let services_before = store.services()?;
    // Iteration restarts from the first key when the current one is deleted meanwhile: bound it.
    let entries = store.ct_entries(capacity.saturating_mul(2).max(1024))?;
    let affinity = store.affinity_entries(AFFINITY_READ_LIMIT)?;
    let mut tables = Tables::new(store.backends()?, store.rev_nats()?, &store.services()?);
    tables.add_members(&services_before);

    let plan = plan_ct(&entries, &tables, now_s, capacity, &lifetimes);
    let mut report = SweepReport {
        entries: plan.entries,
        remaining: plan.entries,
        capacity,
        affinity_entries: affinity.len(),
        ..Default::default()
    };
    apply_ct(store, &plan, &mut report)?;
    apply_affinity(
        store,
        &plan_affinity(&affinity, &tables, now_ns),
        &mut report,
    )?;
    Ok(report)
}

/// Removes what `plan` names, each deletion re-read first and skipped if the datapath changed
/// it since (`Reason::still_applies`); counts into `report`.
pub fn apply_ct(
    store: &mut impl MapStore,
    plan: &CtPlan,
    report: &mut SweepReport,
) -> Result<(), MapsError> {
    for d in &plan.deletions {
        if !still_planned(store, d)? {
            report.skipped += 1;
            continue;
        }
        // Forward first: the reply entry is the claim on the translated tuple, released last.
        let mut ordered: Vec<&(CtKey, CtValue)> = d.entries.iter().collect();
        ordered.sort_by_key(|(k, _)| k.dir != CT_DIR_FORWARD);
        for (k, _) in ordered {
            store.ct_del(k)?;
        }
        *report.removed.entry(d.reason).or_default() += d.entries.len();
        report.remaining = report.remaining.saturating_sub(d.entries.len());
    }
    Ok(())
}

/// Removes the affinity entries `plan` names, unless used since (expiry) or moved to another
/// backend since (the other reasons).
pub fn apply_affinity(
    store: &mut impl MapStore,
    plan: &[(AffinityKey, AffinityValue, Reason)],
    report: &mut SweepReport,
) -> Result<(), MapsError> {
    for (k, planned, reason) in plan {
        let keep = match store.affinity_get(k)? {
            None => continue,
            Some(fresh) if *reason == Reason::AffinityExpired => fresh != *planned,
            Some(fresh) => fresh.backend_id != planned.backend_id,
        };
        if keep {
            report.skipped += 1;
            continue;
        }
        store.affinity_del(k)?;
        *report.removed.entry(*reason).or_default() += 1;
    }
    Ok(())
}

/// At most this many affinity entries are read per sweep (the map holds 64k by default).
const AFFINITY_READ_LIMIT: usize = 4 << 20;

/// Whether every entry of a planned deletion still goes, read again now; an orphan also needs
/// its partner still absent.
fn still_planned(store: &impl MapStore, d: &Deletion) -> Result<bool, MapsError> {
    for (k, planned) in &d.entries {
        if let Some(fresh) = store.ct_get(k)? {
            if !d.reason.still_applies(planned, &fresh) {
                return Ok(false);
            }
        }
    }
    if d.reason == Reason::Orphan {
        let (k, v) = &d.entries[0];
        if store.ct_get(&v.partner(k))?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Bounds of the time between sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalBounds {
    pub min: Duration,
    pub max: Duration,
}

/// The shortest time between sweeps: a sweep of a full default-sized map reads 262144 entries,
/// two system calls each.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

impl IntervalBounds {
    /// `MIN_INTERVAL` (or `max` if shorter) to `max`.
    pub fn up_to(max: Duration) -> IntervalBounds {
        IntervalBounds {
            min: MIN_INTERVAL.min(max),
            max,
        }
    }

    /// The first interval: a minute, within the bounds.
    pub fn initial(&self) -> Duration {
        Duration::from_secs(60).clamp(self.min, self.max)
    }
}

/// The time until the next sweep, after one that went as `report` said (Cilium's ctmap GC
/// adapts the same way): shorter when it removed a big share of the entries or the map is
/// filling (the shorter the more), longer (1.5x) when it found almost nothing to do and the map
/// is far from full, else unchanged; always within `bounds`.
pub fn next_interval(prev: Duration, report: &SweepReport, bounds: IntervalBounds) -> Duration {
    let share = report.ct_removed() as f64 / report.entries.max(1) as f64;
    // The fill before this sweep removed anything: how fast the map fills between sweeps.
    let fill = report.entries as f64 / report.capacity.max(1) as f64;
    let next = if share > 0.25 || fill > 0.5 {
        prev.mul_f64(1.0 - share.max(fill).min(0.9))
    } else if share < 0.05 && fill < 0.25 {
        prev.mul_f64(1.5)
    } else {
        prev
    };
    next.clamp(bounds.min, bounds.max)
}

#[cfg(test)]
mod tests;
