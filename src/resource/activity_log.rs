//! The activity log, as DRBD keeps it: before a write lands in a 4 MiB extent that
//! is not "hot", a transaction naming that extent is made durable in the metadata's
//! AL ring. After a crash as Primary, only the extents the log names can differ from
//! a peer, so only they are marked for resync (instead of the whole device).
//!
//! Writes to hot extents cost nothing but a counter. An extent leaves the log only
//! when no write to it is in flight, and only after the bitmap (which then carries
//! what the log stops covering) is on disk.

use crate::store::meta::al::{ring_index, AlTransaction, AlTransactionType, AlUpdate, AL_EXTENT_SIZE, AL_FREE};
use crate::store::meta::MetaDisk;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, RwLock};

struct Slots {
    /// Extent held by each slot, or AL_FREE.
    extent_of: Vec<u32>,
    /// Slot of each hot extent.
    slot_of: HashMap<u32, usize>,
    /// Writes in flight per hot extent.
    refs: HashMap<u32, u32>,
    /// Last use of each slot (a logical clock), to evict the least recently used.
    last_use: Vec<u64>,
    clock: u64,
    next_tr: u64,
}

/// One resource's activity log.
pub struct ActivityLog {
    meta: Arc<RwLock<MetaDisk>>,
    slots: Mutex<Slots>,
    /// One transaction at a time.
    txn: tokio::sync::Mutex<()>,
}

/// Extents held hot for one write; released on drop.
pub struct Hold<'a> {
    al: &'a ActivityLog,
    offset: u64,
    len: u64,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.al.end_write(self.offset, self.len);
    }
}

/// What attaching found in the log.
pub struct Recovered {
    /// Extents that were hot when the node last stopped (empty after a clean stop).
    pub hot_extents: Vec<u32>,
    /// Ring blocks that were torn or corrupt.
    pub bad_blocks: usize,
}

impl ActivityLog {
    /// Reads the ring, reports what was hot, and starts an empty log. `on_recovered`
    /// runs before the log is emptied, so that it can make the hot extents durable
    /// elsewhere (the bitmap) first.
    pub fn open(
        meta: Arc<RwLock<MetaDisk>>,
        on_recovered: impl FnOnce(&Recovered) -> io::Result<()>,
    ) -> io::Result<(ActivityLog, Recovered)> {
        let (replay, n) = {
            let m = meta.read().expect("meta");
            (m.replay_al()?, m.superblock().al_extents as usize)
        };
        let rec = Recovered {
            hot_extents: replay.active_extents(),
            bad_blocks: replay.bad_blocks,
        };
        on_recovered(&rec)?;
        let next_tr = replay.last_tr.map_or(0, |t| t + 1);
        let al = ActivityLog {
            meta,
            slots: Mutex::new(Slots {
                extent_of: vec![AL_FREE; n],
                slot_of: HashMap::new(),
                refs: HashMap::new(),
                last_use: vec![0; n],
                clock: 0,
                next_tr,
            }),
            txn: tokio::sync::Mutex::new(()),
        };
        al.write_initialized()?;
        Ok((al, rec))
    }

    /// The extent numbers a byte range touches.
    pub fn extents(offset: u64, len: u64) -> std::ops::RangeInclusive<u32> {
        let first = (offset / AL_EXTENT_SIZE as u64) as u32;
        let last = ((offset + len.max(1) - 1) / AL_EXTENT_SIZE as u64) as u32;
        first..=last
    }

    /// Byte range of an extent.
    pub fn extent_range(extent: u32) -> (u64, u64) {
        (extent as u64 * AL_EXTENT_SIZE as u64, AL_EXTENT_SIZE as u64)
    }

    /// Marks the extents of a write hot (durably, if they were not) and holds them
    /// until [`end_write`](Self::end_write).
    pub async fn begin_write(&self, offset: u64, len: u64) -> io::Result<()> {
        for extent in Self::extents(offset, len) {
            if self.try_hold(extent) {
                continue;
            }
            let _one = self.txn.lock().await;
            // Another writer may have made it hot while we waited.
            while !self.try_hold(extent) {
                match self.plan(extent) {
                    Some((slot, evicted)) => self.commit(extent, slot, evicted).await?,
                    // Every slot has writes in flight: let some finish.
                    None => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
                }
            }
        }
        Ok(())
    }

    /// [`begin_write`](Self::begin_write) with a guard that releases on drop, even if
    /// the write's task is cancelled.
    pub async fn hold(&self, offset: u64, len: u64) -> io::Result<Hold<'_>> {
        self.begin_write(offset, len).await?;
        Ok(Hold { al: self, offset, len })
    }

    /// Releases what [`begin_write`](Self::begin_write) held.
    pub fn end_write(&self, offset: u64, len: u64) {
        let mut s = self.slots.lock().expect("al slots");
        for extent in Self::extents(offset, len) {
            if let Some(r) = s.refs.get_mut(&extent) {
                *r = r.saturating_sub(1);
            }
        }
    }

    fn try_hold(&self, extent: u32) -> bool {
        let mut s = self.slots.lock().expect("al slots");
        let Some(&slot) = s.slot_of.get(&extent) else {
            return false;
        };
        s.clock += 1;
        s.last_use[slot] = s.clock;
        *s.refs.entry(extent).or_insert(0) += 1;
        true
    }

    /// Reserves a slot for `extent`: a free one, else the least recently used one with
    /// no write in flight (whose extent leaves the log). Atomic with respect to
    /// [`try_hold`](Self::try_hold), so an extent being evicted cannot gain a writer.
    fn plan(&self, extent: u32) -> Option<(usize, Option<u32>)> {
        let mut s = self.slots.lock().expect("al slots");
        let (slot, evicted) = match s.extent_of.iter().position(|&e| e == AL_FREE) {
            Some(free) => (free, None),
            None => {
                let idle = (0..s.extent_of.len())
                    .filter(|&i| s.refs.get(&s.extent_of[i]).copied().unwrap_or(0) == 0)
                    .min_by_key(|&i| s.last_use[i])?;
                (idle, Some(s.extent_of[idle]))
            }
        };
        if let Some(old) = evicted {
            s.slot_of.remove(&old);
            s.refs.remove(&old);
        }
        s.extent_of[slot] = extent;
        Some((slot, evicted))
    }

    async fn commit(&self, extent: u32, slot: usize, evicted: Option<u32>) -> io::Result<()> {
        let (tr, tr_number) = {
            let s = self.slots.lock().expect("al slots");
            let tr_number = s.next_tr;
            let tr = AlTransaction::with_context(
                tr_number,
                vec![AlUpdate {
                    slot: slot as u32,
                    extent,
                }],
                &s.extent_of,
            );
            (tr, tr_number)
        };
        let meta = self.meta.clone();
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let m = meta.read().expect("meta");
            if evicted.is_some() {
                // What the log stops covering must be in the bitmap on disk first.
                m.flush_bitmap()?;
            }
            let block = tr
                .encode()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            m.write_al_block(ring_index(tr_number, m.layout().al_ring_blocks), &block)
        })
        .await
        .map_err(io::Error::other)?;
        let mut s = self.slots.lock().expect("al slots");
        match written {
            Ok(()) => {
                s.next_tr += 1;
                s.slot_of.insert(extent, slot);
                s.refs.insert(extent, 0);
                Ok(())
            }
            Err(e) => {
                // Keep memory and disk agreeing on what the log covers: the slot is
                // free again (the evicted extent's bits are already in the bitmap).
                s.extent_of[slot] = AL_FREE;
                Err(e)
            }
        }
    }

    /// Empties the log at a clean stop (the bitmap must already be on disk).
    pub fn close(&self) -> io::Result<()> {
        self.write_initialized()
    }

    /// Writes an "initialized" transaction: the log is empty from here on.
    fn write_initialized(&self) -> io::Result<()> {
        let mut s = self.slots.lock().expect("al slots");
        let tr = AlTransaction {
            tr_number: s.next_tr,
            kind: AlTransactionType::Initialized,
            updates: Vec::new(),
            context_start: 0,
            context: Vec::new(),
        };
        let block = tr
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let m = self.meta.read().expect("meta");
        m.write_al_block(ring_index(s.next_tr, m.layout().al_ring_blocks), &block)?;
        s.next_tr += 1;
        Ok(())
    }

    /// Extents hot right now.
    pub fn hot(&self) -> usize {
        self.slots.lock().expect("al slots").slot_of.len()
    }
}
