//! Maglev rings written as deltas: the writer remembers the last table it wrote for each ring and
//! rewrites only the positions that changed (Katran's `Vip::batchRealsUpdate`). A backend change
//! moves about 1/n of the positions, so this is a few thousand writes instead of the whole ring.

use std::collections::BTreeMap;

use super::{MapStore, MapsError};

#[derive(Debug, Default)]
pub struct Rings {
    /// Ring -> the table last written to it. A ring not here is written whole (after a restart
    /// the map may hold anything, unless the ring was read at adoption: `seed`).
    written: BTreeMap<u32, Vec<u32>>,
}

impl Rings {
    /// Writes `table` (one backend id per position, `size` positions; empty: no backends) to
    /// `ring`, skipping positions that already hold the same id.
    pub fn write(
        &mut self,
        store: &mut impl MapStore,
        ring: u32,
        size: u32,
        mut table: Vec<u32>,
    ) -> Result<(), MapsError> {
        table.resize(size as usize, 0);
        let base = ring * size;
        // Taken out while writing: after a failed write what the ring holds is unknown, and
        // the next write is a whole one.
        let old = self.written.remove(&ring);
        for (pos, id) in table.iter().enumerate() {
            if old.as_ref().and_then(|o| o.get(pos)) == Some(id) {
                continue;
            }
            store.maglev_set(base + pos as u32, *id)?;
        }
        self.written.insert(ring, table);
        Ok(())
    }

    /// What `ring` holds, read from the map (at adoption): the next write is a delta from it.
    pub fn seed(&mut self, ring: u32, table: Vec<u32>) {
        self.written.insert(ring, table);
    }

    /// The table last written to (or read from) `ring`.
    pub fn held(&self, ring: u32) -> Option<&[u32]> {
        self.written.get(&ring).map(Vec::as_slice)
    }

    /// The ring was handed back (its service is gone): its contents are no longer tracked.
    pub fn forget(&mut self, ring: u32) {
        self.written.remove(&ring);
    }
}
