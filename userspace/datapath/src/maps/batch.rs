//! Reading a whole hash map in a few bpf(2) calls (BPF_MAP_LOOKUP_BATCH, Linux 5.6) instead of
//! two per entry (get_next_key, then lookup), as aya 0.14's iterator does. The conntrack GC reads
//! the whole CT map on every sweep (up to millions of entries); netctl's dumps read it too.
//!
//! The kernel walks a hash map bucket by bucket and returns whole buckets only: a batch too small
//! for the next bucket fails with ENOSPC, and is then retried larger. Entries inserted or removed
//! by the datapath during the walk may or may not be seen, as with the iterator.

use std::{
    mem,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{MapData, MapError},
    sys::SyscallError,
};

use crate::sys::sys_bpf;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call (a call copies keys and values of this many entries at most).
const BATCH: usize = 4096;

/// Every entry of hash map `map` (up to `limit`), or `None` where the kernel has no batch lookup
/// for it (EINVAL on the first call: a kernel before 5.6), for the caller to iterate instead.
pub(super) fn lookup_all<K: Pod, V: Pod>(
    map: &MapData,
    limit: usize,
) -> Result<Option<Vec<(K, V)>>, MapError> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut chunk = BATCH;
    // The kernel's position between calls: opaque, at least 4 bytes for hash maps.
    let mut position_in = 0u64;
    let mut position_out = 0u64;
    let mut first = true;
    while out.len() < limit {
        // SAFETY: K and V are Pod (plain bytes, any bit pattern valid), so zeroed is a value.
        let zero_k: K = unsafe { mem::zeroed() };
        let zero_v: V = unsafe { mem::zeroed() };
        let mut keys = vec![zero_k; chunk];
        let mut values = vec![zero_v; chunk];
        let mut attr = [0u64; 16];
        // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags }
        attr[0] = if first {
            0
        } else {
            &raw mut position_in as u64
        };
        attr[1] = &raw mut position_out as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = values.as_mut_ptr() as u64;
        attr[4] = chunk as u64 | (u64::from(fd as u32) << 32);
        let result = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel writes back how many entries it filled, also on ENOENT (the last batch).
        let filled = (attr[4] & 0xffff_ffff) as usize;
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                take(&mut out, &keys, &values, filled, limit);
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && filled == 0 => {
                // The next bucket holds more entries than one batch: ask for more at once.
                chunk *= 2;
                continue;
            }
            Err(e) if first && e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(io_error) => {
                return Err(MapError::SyscallError(SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error,
                }));
            }
        }
        take(&mut out, &keys, &values, filled, limit);
        position_in = position_out;
        first = false;
    }
    Ok(Some(out))
}

fn take<K: Pod, V: Pod>(out: &mut Vec<(K, V)>, keys: &[K], values: &[V], n: usize, limit: usize) {
    let n = n.min(keys.len()).min(limit.saturating_sub(out.len()));
    out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
}
