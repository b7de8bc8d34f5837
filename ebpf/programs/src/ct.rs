//! Connection tracking for the TC path and masquerading.
//!
//! A connection is two CONNTRACK entries, keyed by each direction's tuple as it arrives (before
//! NAT): the forward entry (what the initiator sends) and the reply entry (what the other end
//! answers). Each value says how its packets are rewritten, so the partner's key follows from
//! the value alone (`CtValue::partner`): both are created together, the reply entry first with
//! BPF_NOEXIST (that claims the translated tuple, so two connections can never share one), and
//! both are removed together, here when a connection is found dead and in the agent's garbage
//! collector when it expires.
//!
//! Each packet refreshes its direction's expiry to now + the lifetime of what that direction has
//! seen (`CtLifetimes::of`: TCP handshake, established, closing; other protocols). An expired
//! entry is treated as absent.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use petrel_common::{
    CT_F_REMAPPED, CT_F_SNAT, CT_SEEN_ACK, CT_SEEN_FIN, CT_SEEN_PKT, CT_SEEN_RST, CT_SEEN_SYN,
    CtKey, CtLifetimes, CtValue, IPPROTO_TCP, NAT_PORT_MAX_DEFAULT, NAT_PORT_MIN_DEFAULT, config,
    ct_connection_over, stat,
};

use crate::maps::{CONNTRACK, count};

const BPF_NOEXIST: u64 = 1;
/// Random ports tried for a new translated tuple before the flow is dropped (Cilium tries 32).
const PORT_PROBES: u32 = 32;

/// CLOCK_MONOTONIC in seconds, the clock of `CtValue::expires_s`.
#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: plain helper call.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// The lifetime of `seen` for `proto`, with the agent's settings (0: the default).
#[inline(always)]
fn lifetime(proto: u8, seen: u8) -> u32 {
    let d = CtLifetimes::DEFAULT;
    let (slot, default) = if proto != IPPROTO_TCP {
        (config::CT_OTHER_S, d.other)
    } else if seen & CT_SEEN_RST != 0 {
        (config::CT_TCP_CLOSING_S, d.tcp_closing)
    } else if seen & CT_SEEN_FIN != 0 {
        (config::CT_TCP_TIME_WAIT_S, d.tcp_time_wait)
    } else if seen & CT_SEEN_ACK != 0 {
        (config::CT_TCP_ESTABLISHED_S, d.tcp_established)
    } else {
        (config::CT_TCP_SYN_S, d.tcp_syn)
    };
    match crate::maps::config(slot) {
        0 => default,
        s => s,
    }
}

/// The `CT_SEEN_*` bits a packet with TCP flags `tcp_flags` (0 for other protocols) sets.
#[inline(always)]
pub fn seen_bits(tcp_flags: u8) -> u8 {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let mut b = CT_SEEN_PKT;
    if tcp_flags & SYN != 0 {
        b |= CT_SEEN_SYN;
    }
    if tcp_flags & ACK != 0 {
        b |= CT_SEEN_ACK;
    }
    if tcp_flags & FIN != 0 {
        b |= CT_SEEN_FIN;
    }
    if tcp_flags & RST != 0 {
        b |= CT_SEEN_RST;
    }
    b
}

/// The entry for `key` if its connection is alive: an expired direction is still alive while
/// the other one is (a UDP server answering once in a while, a silent client of a server-push
/// stream), as the garbage collector judges it (`ct_connection_over`). A connection found over
/// is removed, both entries, so the packet starts a new one.
#[inline(always)]
pub fn live(key: &CtKey, now: u32) -> Option<*mut CtValue> {
    let p = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: a valid pointer into the map value, for this program run.
    let v = unsafe { *p };
    if v.expired(now) {
        // SAFETY: copied out at once.
        let partner = unsafe { CONNTRACK.get(v.partner(key)) }.copied();
        if ct_connection_over(&v, partner.as_ref(), now) {
            remove(key, &v);
            return None;
        }
    }
    Some(p)
}

/// A live entry for `key` (see `live`), refreshed by a packet that set `bits`.
#[inline(always)]
pub fn hit(key: &CtKey, bits: u8, now: u32) -> Option<CtValue> {
    let p = live(key, now)?;
    // SAFETY: a valid pointer into the map value, for this program run. Concurrent updates
    // of the same entry on another CPU only race on the expiry and seen bits, which every
    // writer moves forward.
    let v = unsafe { &mut *p };
    let seen = v.seen | bits;
    let expires = now.wrapping_add(lifetime(key.proto, seen));
    if seen != v.seen || expires != v.expires_s {
        v.seen = seen;
        v.expires_s = expires;
    }
    Some(*v)
}

/// `hit` for a packet in the forward direction (the initiator's). A SYN without ACK on a
/// connection that closed (a FIN or RST went either way) reopens it on the same tuple, as
/// netfilter treats a SYN on a TIME_WAIT entry, but keeps its translation: the state starts
/// again from the handshake (so the new connection does not inherit a closing lifetime), while
/// the backend and any remapped source port stay, so the backend's TIME_WAIT socket on that
/// tuple sees the same client (and the same timestamp offset) and accepts the SYN. Forgetting
/// the pair instead would free its remapped port for another frontend's flow, which that
/// TIME_WAIT socket would refuse (PAWS).
#[inline(always)]
pub fn hit_forward(key: &CtKey, bits: u8, now: u32) -> Option<CtValue> {
    if bits & CT_SEEN_SYN != 0 && bits & CT_SEEN_ACK == 0 {
        let closed = |seen: u8| seen & (CT_SEEN_FIN | CT_SEEN_RST) != 0;
        if let Some(p) = CONNTRACK.get_ptr_mut(key) {
            // SAFETY: valid pointers into map values for this program run; only the seen bits
            // are written, which concurrent writers only add to.
            unsafe {
                let partner = CONNTRACK.get_ptr_mut((*p).partner(key));
                let partner_closed = partner.is_some_and(|r| closed((*r).seen));
                if closed((*p).seen) || partner_closed {
                    (*p).seen = 0;
                    if let Some(r) = partner {
                        (*r).seen = 0;
                    }
                }
            }
        }
    }
    hit(key, bits, now)
}

/// Removes a connection: the entry and its partner.
#[inline(always)]
pub fn remove(key: &CtKey, v: &CtValue) {
    let _ = CONNTRACK.remove(v.partner(key));
    let _ = CONNTRACK.remove(key);
}

/// Why a new connection could not be tracked.
pub enum Refused {
    /// The translated tuple is taken (only when the port may not change).
    Taken,
    /// No free port in the NAT range after every probe.
    NoPort,
    /// The map is full.
    Full,
}

/// How the translated source port of a new connection is chosen.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Exactly `fwd.src_port_be`; a taken tuple refuses the connection.
    Fixed,
    /// `fwd.src_port_be` if its tuple is free, else one from the NAT range (clash remap).
    Keep,
    /// Always one from the NAT range (the source becomes the node's address, whose own
    /// sockets never use that range).
    Alloc,
}

/// Stores a new connection: `fwd` for the packet's own tuple `key`, and its reply entry (keyed by
/// `fwd`'s partner, rewriting answers back to `key`'s tuple, otherwise as `fwd`). Per `port`, the source port may be picked from the NAT
/// range (`fwd.src_port_be` and the reply key change together); `fwd` is updated to what was
/// stored. The reply entry goes in first, with BPF_NOEXIST: it is the claim on the translated
/// tuple. Refusals other than `Taken` are counted.
#[inline(always)]
pub fn create(key: &CtKey, fwd: &mut CtValue, port: Port, now: u32) -> Result<(), Refused> {
    fwd.expires_s = now.wrapping_add(lifetime(key.proto, fwd.seen));
    let rev = CtValue {
        src_addr_be: key.daddr_be,
        src_port_be: key.dport_be,
        dst_addr_be: key.saddr_be,
        dst_port_be: key.sport_be,
        expires_s: now.wrapping_add(lifetime(key.proto, 0)),
        seen: 0,
        ..*fwd
    };
    let rev_key = fwd.partner(key);
    let claimed = port != Port::Alloc && CONNTRACK.insert(rev_key, rev, BPF_NOEXIST).is_ok();
    if !claimed {
        if port == Port::Fixed {
            // SAFETY: only checked for presence.
            if unsafe { CONNTRACK.get(rev_key) }.is_some() {
                return Err(Refused::Taken);
            }
            count(stat::DROP_CT_FULL);
            return Err(Refused::Full);
        }
        fwd.src_port_be = claim_port(rev_key, &rev)?;
        if port == Port::Keep {
            fwd.flags |= CT_F_SNAT | CT_F_REMAPPED;
            count(stat::CT_CLASH_REMAP);
        }
    }
    if CONNTRACK.insert(key, *fwd, 0).is_err() {
        let _ = CONNTRACK.remove(fwd.partner(key));
        count(stat::DROP_CT_FULL);
        return Err(Refused::Full);
    }
    Ok(())
}

/// Claims a port of the NAT range for the reply tuple `rev_key` (its destination port is the
/// one being chosen): random probes, each an insert that fails if the tuple is taken. Returns
/// the port (network order), or 0 when every probe failed.
///
/// Not inlined: the probe loop is verified once, not once per way of reaching it.
#[inline(never)]
fn claim(rev_key: &mut CtKey, rev: &CtValue) -> u32 {
    let (min, max) = match (
        crate::maps::config(config::NAT_PORT_MIN),
        crate::maps::config(config::NAT_PORT_MAX),
    ) {
        (lo, hi) if lo != 0 && hi >= lo && hi <= 65535 => (lo, hi),
        _ => (
            u32::from(NAT_PORT_MIN_DEFAULT),
            u32::from(NAT_PORT_MAX_DEFAULT),
        ),
    };
    // Never 0 (max >= min); checked_rem keeps a panic path out of the program anyway.
    let span = max - min + 1;
    for _ in 0..PORT_PROBES {
        // SAFETY: plain helper call.
        let r = unsafe { bpf_get_prandom_u32() };
        let port = ((min + r.checked_rem(span).unwrap_or(0)) as u16).to_be();
        rev_key.dport_be = port;
        if CONNTRACK.insert(*rev_key, rev, BPF_NOEXIST).is_ok() {
            return u32::from(port);
        }
    }
    0
}

/// `claim`, with the refusal counted: a full map, or a range with no free port left.
#[inline(always)]
fn claim_port(mut rev_key: CtKey, rev: &CtValue) -> Result<u16, Refused> {
    match claim(&mut rev_key, rev) {
        0 => {
            // SAFETY: only checked for presence: the last probe failed on a taken tuple, or
            // on a full map.
            if unsafe { CONNTRACK.get(rev_key) }.is_some() {
                count(stat::DROP_NAT_NO_PORT);
                Err(Refused::NoPort)
            } else {
                count(stat::DROP_CT_FULL);
                Err(Refused::Full)
            }
        }
        p => Ok(p as u16),
    }
}
