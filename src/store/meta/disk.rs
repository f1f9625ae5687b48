//! [`MetaDisk`]: the metadata of one device, read from and written to its
//! file or block device with positioned I/O (`pread`/`pwrite`) and
//! `fdatasync` for durability.
//!
//! The metadata file is opened without `O_DIRECT`; every offset and size is a
//! multiple of 4 KiB, so switching to direct I/O later is possible, and the
//! data path may use `O_DIRECT` on the data area of the same file (the ranges
//! never overlap).

use super::al::{self, AlReplay};
use super::bitmap::{Bitmap, PAGE_BYTES};
use super::gi::{self, UUID_JUST_CREATED};
use super::layout::{
    align_down, Layout, LayoutError, BLOCK, DEFAULT_AL_RING_BLOCKS, DEFAULT_BYTES_PER_BIT, MAX_NODE_ID_EXCL, MAX_PEERS,
    SB_SIZE,
};
use super::superblock::{al_extents_range, DecodeError, MdFlags, PeerFlags, Superblock, NODE_ID_NONE};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Largest single write or read of metadata areas.
const IO_CHUNK: usize = 1 << 20;
/// Largest number of bitmap ranges listed per slot by [`MetaDisk::dump`].
const DUMP_MAX_RANGES: usize = 10_000;

/// Where the metadata of a device lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaLocation {
    /// At the end of the backing device, which shrinks the data area.
    Internal,
    /// At the start of a separate file or block device (big enough for the
    /// whole metadata: see [`super::layout::external_md_size`]).
    External(PathBuf),
}

/// Parameters of `create-md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Number of bitmap slots (peers this device can have), 1..=31.
    pub max_peers: u32,
    /// Activity-log extents (4 MiB each), 7..=6216 with the 32 KiB ring.
    pub al_extents: u32,
    /// This node's id, 0..=31.
    pub node_id: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            max_peers: 1,
            al_extents: al::AL_DEFAULT_EXTENTS,
            node_id: 0,
        }
    }
}

/// Errors of [`MetaDisk::create`] and [`MetaDisk::open`]. Every message says
/// what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path} does not exist{hint}")]
    NotFound {
        path: String,
        what: &'static str,
        hint: String,
    },
    #[error("{what} {path} is too small: {size} bytes, it needs at least {need} bytes{hint}")]
    TooSmall {
        path: String,
        what: &'static str,
        size: u64,
        need: u64,
        hint: String,
    },
    #[error("{path}: no hablock metadata (all zeroes at byte {offset}); run `hbadm create-md`{hint}")]
    NoMetadata { path: String, offset: u64, hint: String },
    #[error("{path} (superblock at byte {offset}): {source}")]
    Superblock {
        path: String,
        offset: u64,
        #[source]
        source: DecodeError,
    },
    #[error(
        "{path} already holds valid hablock metadata (device uuid 0x{device_uuid:016x}); refusing \
         to overwrite it. Use `hbadm create-md --force` to re-create it (resets the bitmap and the \
         generation identifiers, not the data)"
    )]
    Exists { path: String, device_uuid: u64 },
    #[error("{path}: {what}; use `hbadm create-md --force` to overwrite it")]
    WouldOverwrite { path: String, what: String },
    #[error(
        "{path}: the backing device shrank: the metadata records {la_size} bytes of data but only \
         {available} bytes are there now; grow the device back to at least {la_size} bytes of data \
         (or re-create the metadata and resync)"
    )]
    Shrunk { path: String, la_size: u64, available: u64 },
    #[error("{path}: {reason}")]
    Geometry { path: String, reason: String },
    #[error("invalid metadata options: {0}")]
    InvalidOptions(String),
}

/// Disk state implied by the metadata flags (see [`MetaDisk::disk_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MdDiskState {
    Inconsistent,
    Outdated,
    UpToDate,
}

impl std::fmt::Display for MdDiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MdDiskState::Inconsistent => "Inconsistent",
            MdDiskState::Outdated => "Outdated",
            MdDiskState::UpToDate => "UpToDate",
        })
    }
}

/// Size in bytes of a regular file or block device.
pub fn device_size(file: &File) -> io::Result<u64> {
    let md = file.metadata()?;
    let ft = md.file_type();
    if ft.is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 stores one u64 through the pointer, which is
        // valid for writes for the duration of the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size)
    } else if ft.is_file() {
        Ok(md.len())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file or block device",
        ))
    }
}

/// `_IOR(0x12, 114, size_t)`; the direction bits differ on a few architectures.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const BLKGETSIZE64: u64 = 0x4008_1272;
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const BLKGETSIZE64: u64 = 0x8008_1272;

fn disp(p: &Path) -> String {
    p.display().to_string()
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> MetaError {
    let path = disp(path);
    move |source| MetaError::Io { path, op, source }
}

fn open_rw(path: &Path, what: &'static str, hint: String) -> Result<(File, u64, bool), MetaError> {
    let f = OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            MetaError::NotFound {
                path: disp(path),
                what,
                hint,
            }
        } else {
            MetaError::Io {
                path: disp(path),
                op: "open",
                source: e,
            }
        }
    })?;
    let size = device_size(&f).map_err(io_err(path, "size"))?;
    let is_blk = f.metadata().map(|m| m.file_type().is_block_device()).unwrap_or(false);
    Ok((f, size, is_blk))
}

fn grow_hint(path: &Path, need: u64, is_blk: bool) -> String {
    if is_blk {
        " (use a device of at least that size)".to_string()
    } else {
        format!(" (grow it with `truncate -s {need} {}`)", path.display())
    }
}

fn read_block(f: &File, path: &Path, offset: u64) -> Result<[u8; SB_SIZE as usize], MetaError> {
    let mut b = [0u8; SB_SIZE as usize];
    f.read_exact_at(&mut b, offset)
        .map_err(io_err(path, "read superblock"))?;
    Ok(b)
}

fn check_options(o: &CreateOptions) -> Result<(), MetaError> {
    if o.max_peers == 0 || o.max_peers > MAX_PEERS {
        return Err(MetaError::InvalidOptions(format!(
            "max-peers {} out of range 1..={MAX_PEERS}",
            o.max_peers
        )));
    }
    if o.node_id >= MAX_NODE_ID_EXCL {
        return Err(MetaError::InvalidOptions(format!(
            "node-id {} out of range 0..={}",
            o.node_id,
            MAX_NODE_ID_EXCL - 1
        )));
    }
    let r = al_extents_range(DEFAULT_AL_RING_BLOCKS);
    if !r.contains(&o.al_extents) {
        return Err(MetaError::InvalidOptions(format!(
            "al-extents {} out of range {}..={}",
            o.al_extents,
            r.start(),
            r.end()
        )));
    }
    Ok(())
}

/// The opened metadata of one device.
pub struct MetaDisk {
    backing_path: PathBuf,
    md_path: PathBuf,
    /// The file holding the metadata: the backing device itself (internal)
    /// or the external metadata device.
    md_file: File,
    backing_size: u64,
    md_dev_size: u64,
    sb: Superblock,
    /// Layout and data size as opened; the superblock may not change them.
    layout: Layout,
    data_size: u64,
    bitmap: Bitmap,
    /// Serialises bitmap flushes so "durable on return" holds for each caller.
    flush_lock: Mutex<()>,
}

impl std::fmt::Debug for MetaDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaDisk")
            .field("backing", &self.backing_path)
            .field("md", &self.md_path)
            .field("data_size", &self.data_size)
            .field("layout", &self.layout)
            .finish()
    }
}

impl MetaDisk {
    /// Creates fresh metadata (DRBD's `create-md`): zeroed bitmap, empty
    /// activity log, current UUID = just created, no flags but `al-clean`, and
    /// la-size = the whole data area. Refuses with [`MetaError::Exists`] when
    /// valid hablock metadata is there, and with [`MetaError::WouldOverwrite`]
    /// when DRBD metadata, corrupt hablock metadata or (internal) non-zero
    /// data is there, unless `force`. Neither the backing file nor an external
    /// metadata file is ever created or extended here.
    pub fn create(
        backing: &Path,
        loc: &MetaLocation,
        opts: &CreateOptions,
        force: bool,
    ) -> Result<MetaDisk, MetaError> {
        check_options(opts)?;
        let (bfile, bsize, _) = open_rw(
            backing,
            "backing device",
            " (create-md does not create it: create the file, e.g. `truncate -s 1G PATH`, or fix the path)".into(),
        )?;
        let (layout, md_file, md_path) = match loc {
            MetaLocation::Internal => {
                let l = Layout::internal(bsize, opts.max_peers, DEFAULT_BYTES_PER_BIT, DEFAULT_AL_RING_BLOCKS)
                    .map_err(|e| layout_error(backing, e))?;
                (l, bfile, backing.to_path_buf())
            }
            MetaLocation::External(md) => {
                let l = Layout::external(bsize, opts.max_peers, DEFAULT_BYTES_PER_BIT, DEFAULT_AL_RING_BLOCKS)
                    .map_err(|e| layout_error(backing, e))?;
                let need = l.md_size;
                let (mf, msize, blk) = open_rw(
                    md,
                    "external metadata device",
                    format!(
                        " (create-md does not create it: make one of at least {need} bytes, e.g. `truncate -s {need} {}`)",
                        md.display()
                    ),
                )?;
                if msize < need {
                    return Err(MetaError::TooSmall {
                        path: disp(md),
                        what: "external metadata device",
                        size: msize,
                        need,
                        hint: grow_hint(md, need, blk),
                    });
                }
                (l, mf, md.clone())
            }
        };

        // What is there now?
        let old = read_block(&md_file, &md_path, layout.sb_offset)?;
        let mut had_ours = false;
        match Superblock::decode(&old) {
            Ok(sb) => {
                if !force {
                    return Err(MetaError::Exists {
                        path: disp(&md_path),
                        device_uuid: sb.device_uuid,
                    });
                }
                had_ours = true;
            }
            Err(DecodeError::Zeroed) => {}
            Err(e) if !force => {
                let what = match e {
                    DecodeError::Drbd { version, .. } => {
                        format!("it holds {version} metadata at byte {}", layout.sb_offset)
                    }
                    DecodeError::Foreign { .. } if layout.internal => format!(
                        "the last 4 KiB before byte {} are not empty: internal metadata would \
                         overwrite the last {} bytes of the device (shrink the file system first, \
                         or use external metadata)",
                        layout.md_end(),
                        layout.md_size
                    ),
                    DecodeError::Foreign { .. } => {
                        format!("byte {} holds something that is not hablock metadata", layout.sb_offset)
                    }
                    other => format!("it holds damaged hablock metadata ({other})"),
                };
                return Err(MetaError::WouldOverwrite {
                    path: disp(&md_path),
                    what,
                });
            }
            Err(_) => had_ours = old[..8] == super::superblock::MAGIC,
        }

        // Invalidate an old superblock first, so a crash mid-way never leaves
        // a valid superblock in front of a half-written bitmap.
        let zeros = vec![0u8; IO_CHUNK];
        if had_ours {
            md_file
                .write_all_at(&zeros[..SB_SIZE as usize], layout.sb_offset)
                .and_then(|_| md_file.sync_data())
                .map_err(io_err(&md_path, "clear old superblock"))?;
        }
        for (start, len) in [
            (layout.bm_offset, layout.bm_size()),
            (layout.al_offset, layout.al_size()),
        ] {
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(IO_CHUNK as u64) as usize;
                md_file
                    .write_all_at(&zeros[..n], start + done)
                    .map_err(io_err(&md_path, "zero metadata area"))?;
                done += n as u64;
            }
        }
        md_file.sync_data().map_err(io_err(&md_path, "sync metadata areas"))?;

        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let device_uuid = loop {
            let u: u64 = rand::random();
            if u != 0 {
                break u;
            }
        };
        let mut sb = Superblock::new(layout, opts.node_id, opts.al_extents, device_uuid, created);
        sb.write_seq = 1;
        sb.validate().map_err(|reason| MetaError::Geometry {
            path: disp(&md_path),
            reason,
        })?;
        md_file
            .write_all_at(&sb.encode(), layout.sb_offset)
            .and_then(|_| md_file.sync_data())
            .map_err(io_err(&md_path, "write superblock"))?;
        drop(md_file);
        tracing::info!(
            backing = %backing.display(),
            md = %md_path.display(),
            data_size = layout.data_capacity,
            md_size = layout.md_size,
            "created metadata"
        );
        MetaDisk::open(backing, loc)
    }

    /// Opens and validates existing metadata: magic, version, checksum, field
    /// sanity, and the geometry against the devices' sizes now. A corrupt or
    /// foreign superblock is an error, never a reason to re-initialise.
    pub fn open(backing: &Path, loc: &MetaLocation) -> Result<MetaDisk, MetaError> {
        let (bfile, bsize, _) = open_rw(backing, "backing device", String::new())?;
        let (md_file, md_path, md_dev_size, sb_offset) = match loc {
            MetaLocation::Internal => {
                let s4 = align_down(bsize);
                if s4 < 2 * BLOCK {
                    return Err(MetaError::TooSmall {
                        path: disp(backing),
                        what: "backing device",
                        size: bsize,
                        need: 2 * BLOCK,
                        hint: " to hold internal metadata".into(),
                    });
                }
                (bfile, backing.to_path_buf(), bsize, s4 - SB_SIZE)
            }
            MetaLocation::External(md) => {
                let (mf, msize, _) = open_rw(md, "external metadata device", String::new())?;
                if msize < SB_SIZE {
                    return Err(MetaError::NoMetadata {
                        path: disp(md),
                        offset: 0,
                        hint: format!(" (the device is only {msize} bytes)"),
                    });
                }
                drop(bfile);
                (mf, md.clone(), msize, 0)
            }
        };
        let block = read_block(&md_file, &md_path, sb_offset)?;
        let sb = match Superblock::decode(&block) {
            Ok(sb) => sb,
            Err(DecodeError::Zeroed) => {
                return Err(MetaError::NoMetadata {
                    path: disp(&md_path),
                    offset: sb_offset,
                    hint: if matches!(loc, MetaLocation::Internal) {
                        " (if the backing device was enlarged or shrunk while down, its metadata \
                         is no longer at its end: restore the original size)"
                            .into()
                    } else {
                        String::new()
                    },
                })
            }
            Err(source) => {
                return Err(MetaError::Superblock {
                    path: disp(&md_path),
                    offset: sb_offset,
                    source,
                })
            }
        };
        let l = sb.layout;
        let geo = |reason: String| MetaError::Geometry {
            path: disp(&md_path),
            reason,
        };
        match loc {
            MetaLocation::Internal => {
                if !l.internal {
                    return Err(geo(
                        "this is external metadata but the configuration says internal".into()
                    ));
                }
                if l.sb_offset != sb_offset {
                    return Err(geo(format!(
                        "the superblock found at byte {sb_offset} was written for a device of {} \
                         bytes but the device now has {bsize} bytes; restore the original size",
                        l.md_end()
                    )));
                }
            }
            MetaLocation::External(_) => {
                if l.internal {
                    return Err(geo(
                        "this is internal metadata but the configuration says external".into()
                    ));
                }
                if md_dev_size < l.md_end() {
                    return Err(MetaError::TooSmall {
                        path: disp(&md_path),
                        what: "external metadata device",
                        size: md_dev_size,
                        need: l.md_end(),
                        hint: " (it was truncated: restore it)".into(),
                    });
                }
                let available = align_down(bsize);
                if available < sb.la_size {
                    return Err(MetaError::Shrunk {
                        path: disp(backing),
                        la_size: sb.la_size,
                        available,
                    });
                }
            }
        }

        let bitmap = Bitmap::new(l.max_peers as usize, l.bm_slot_size, sb.la_size, l.bytes_per_bit);
        let mut buf = vec![0u8; IO_CHUNK];
        let total = l.bm_size();
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(IO_CHUNK as u64) as usize;
            md_file
                .read_exact_at(&mut buf[..n], l.bm_offset + done)
                .map_err(io_err(&md_path, "read bitmap"))?;
            bitmap.load_pages((done / PAGE_BYTES as u64) as usize, &buf[..n]);
            done += n as u64;
        }
        let data_size = sb.la_size;
        Ok(MetaDisk {
            backing_path: backing.to_path_buf(),
            md_path,
            md_file,
            backing_size: bsize,
            md_dev_size,
            layout: l,
            data_size,
            sb,
            bitmap,
            flush_lock: Mutex::new(()),
        })
    }

    /// Bytes usable by the replicated device (the last agreed size, a multiple of 4096).
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// The superblock as last read or written.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The superblock, for changing flags and generation identifiers; call
    /// [`write_superblock`](Self::write_superblock) to make changes durable.
    /// The layout and la-size must not be changed (resize is not supported yet).
    pub fn superblock_mut(&mut self) -> &mut Superblock {
        &mut self.sb
    }

    /// Writes the superblock (bumping its write sequence number) and syncs:
    /// durable on return. Refuses a superblock that would not pass `open`.
    pub fn write_superblock(&mut self) -> io::Result<()> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        if self.sb.layout != self.layout {
            return Err(invalid("the metadata layout cannot be changed in place".into()));
        }
        if self.sb.la_size != self.data_size {
            return Err(invalid(
                "la-size cannot be changed in place (resize is not supported yet)".into(),
            ));
        }
        self.sb.validate().map_err(invalid)?;
        self.sb.write_seq = self.sb.write_seq.wrapping_add(1);
        self.md_file.write_all_at(&self.sb.encode(), self.layout.sb_offset)?;
        self.md_file.sync_data()
    }

    /// The in-memory bitmaps (one slot per peer).
    pub fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }

    /// Writes the bitmap pages changed since the last flush, then syncs:
    /// durable on return. On failure the pages stay dirty.
    pub fn flush_bitmap(&self) -> io::Result<()> {
        let _guard = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let pages = self.bitmap.take_dirty();
        if pages.is_empty() {
            return Ok(());
        }
        let max_run = IO_CHUNK / PAGE_BYTES;
        let mut buf = vec![0u8; IO_CHUNK];
        let mut i = 0;
        while i < pages.len() {
            let mut j = i + 1;
            while j < pages.len() && pages[j] == pages[j - 1] + 1 && j - i < max_run {
                j += 1;
            }
            for (k, &p) in pages[i..j].iter().enumerate() {
                self.bitmap
                    .page_bytes(p, &mut buf[k * PAGE_BYTES..(k + 1) * PAGE_BYTES]);
            }
            let off = self.layout.bm_offset + pages[i] as u64 * PAGE_BYTES as u64;
            if let Err(e) = self.md_file.write_all_at(&buf[..(j - i) * PAGE_BYTES], off) {
                pages[i..].iter().for_each(|&p| self.bitmap.mark_dirty(p));
                return Err(e);
            }
            i = j;
        }
        if let Err(e) = self.md_file.sync_data() {
            pages.iter().for_each(|&p| self.bitmap.mark_dirty(p));
            return Err(e);
        }
        Ok(())
    }

    // ---- Conveniences for the resource layer. They change the in-memory
    // superblock only; call `write_superblock` to make the change durable.

    /// True when the metadata was left by a node that was primary and did not
    /// stop cleanly (the primary indicator is still set), i.e. it crashed as
    /// primary: the blocks it may have written must be resynced.
    pub fn was_primary_unclean(&self) -> bool {
        self.sb.flags.has(MdFlags::PRIMARY_IND)
    }

    /// The disk state the flags imply at attach, as DRBD derives it: not
    /// consistent = Inconsistent; consistent but not up to date = Outdated;
    /// consistent and was up to date = UpToDate.
    pub fn disk_state(&self) -> MdDiskState {
        let f = self.sb.flags;
        if !f.has(MdFlags::CONSISTENT) {
            MdDiskState::Inconsistent
        } else if !f.has(MdFlags::WAS_UP_TO_DATE) {
            MdDiskState::Outdated
        } else {
            MdDiskState::UpToDate
        }
    }

    /// Records whether the local data is consistent and up to date.
    pub fn set_up_to_date(&mut self, up_to_date: bool) {
        self.sb.flags.set(MdFlags::CONSISTENT, up_to_date);
        self.sb.flags.set(MdFlags::WAS_UP_TO_DATE, up_to_date);
    }

    /// Bitmap slot assigned to the peer `node_id`, if any (lookup only).
    pub fn peer_slot(&self, node_id: u32) -> Option<usize> {
        if node_id == NODE_ID_NONE {
            return None;
        }
        self.sb.peers[..self.layout.max_peers as usize]
            .iter()
            .position(|p| p.node_id == node_id)
    }

    /// Bitmap slot of the peer `node_id`, assigning the first free slot when
    /// it has none (DRBD assigns slots the same way, on first sight of a
    /// peer). `None` when every slot is taken, or `node_id` is this node's own
    /// id or out of range.
    pub fn assign_peer_slot(&mut self, node_id: u32) -> Option<usize> {
        if node_id >= super::layout::MAX_NODE_ID_EXCL || node_id == self.sb.node_id {
            return None;
        }
        if let Some(s) = self.peer_slot(node_id) {
            return Some(s);
        }
        let n = self.layout.max_peers as usize;
        let s = self.sb.peers[..n].iter().position(|p| p.node_id == NODE_ID_NONE)?;
        let p = &mut self.sb.peers[s];
        p.node_id = node_id;
        p.flags.set(PeerFlags::NODE_EXISTS, true);
        Some(s)
    }

    /// Records a clean stop (`true`: the activity log is empty) or that the
    /// device is in use (`false`).
    pub fn set_clean(&mut self, clean: bool) {
        self.sb.flags.set(MdFlags::AL_CLEAN, clean);
    }

    /// Sets or clears the primary indicator.
    pub fn set_primary(&mut self, primary: bool) {
        self.sb.flags.set(MdFlags::PRIMARY_IND, primary);
    }

    /// True while the current UUID is still the just-created one: this
    /// device has never held a data generation.
    pub fn is_just_created(&self) -> bool {
        gi::uuid_value(self.sb.gi.current) == UUID_JUST_CREATED
    }

    /// Declares the local data the good copy and starts a new generation as
    /// primary (`primary --force`, or the first write after losing peers): a
    /// fresh random current UUID with the primary bit; every assigned peer
    /// slot not marked connected gets the old current UUID as bitmap UUID (see
    /// [`gi::Generations::new_current_uuid`]); the data is marked consistent
    /// and up to date.
    pub fn start_new_generation(&mut self) {
        let away: Vec<usize> = (0..self.layout.max_peers as usize)
            .filter(|&s| {
                let p = &self.sb.peers[s];
                p.node_id != NODE_ID_NONE && !p.flags.has(PeerFlags::CONNECTED)
            })
            .collect();
        let fresh = gi::random_uuid(&mut rand::thread_rng(), true);
        self.sb.gi.new_current_uuid(fresh, true, &away);
        self.set_up_to_date(true);
    }

    /// The generation identifiers on one line, like `drbdadm get-gi`:
    /// `CURRENT:BITMAP[0]:..:BITMAP[max_peers-1]:HISTORY[0]:HISTORY[1]:c:u:p:cp:ac`
    /// with flag digits consistent, was-up-to-date, primary, crashed-primary,
    /// al-clean.
    pub fn gi_string(&self) -> String {
        let g = &self.sb.gi;
        let mut s = format!("{:016X}", g.current);
        for b in &g.bitmap[..self.layout.max_peers as usize] {
            let _ = write!(s, ":{b:016X}");
        }
        let _ = write!(s, ":{:016X}:{:016X}", g.history[0], g.history[1]);
        let f = self.sb.flags;
        for bit in [
            MdFlags::CONSISTENT,
            MdFlags::WAS_UP_TO_DATE,
            MdFlags::PRIMARY_IND,
            MdFlags::CRASHED_PRIMARY,
            MdFlags::AL_CLEAN,
        ] {
            let _ = write!(s, ":{}", u8::from(f.has(bit)));
        }
        s
    }

    /// Where the areas are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The backing (data) device.
    pub fn backing_path(&self) -> &Path {
        &self.backing_path
    }

    /// The file holding the metadata (equal to the backing path when internal).
    pub fn md_path(&self) -> &Path {
        &self.md_path
    }

    /// Size of the backing device when opened.
    pub fn backing_size(&self) -> u64 {
        self.backing_size
    }

    /// Reads activity-log ring block `index` (`0..al_ring_blocks`).
    pub fn read_al_block(&self, index: u32) -> io::Result<[u8; BLOCK as usize]> {
        self.check_al_index(index)?;
        let mut b = [0u8; BLOCK as usize];
        self.md_file
            .read_exact_at(&mut b, self.layout.al_offset + index as u64 * BLOCK)?;
        Ok(b)
    }

    /// Writes activity-log ring block `index` and syncs: durable on return.
    pub fn write_al_block(&self, index: u32, block: &[u8; BLOCK as usize]) -> io::Result<()> {
        self.check_al_index(index)?;
        self.md_file
            .write_all_at(block, self.layout.al_offset + index as u64 * BLOCK)?;
        self.md_file.sync_data()
    }

    /// Reads the whole ring and replays it (see [`al::replay`]).
    pub fn replay_al(&self) -> io::Result<AlReplay> {
        let blocks = (0..self.layout.al_ring_blocks)
            .map(|i| self.read_al_block(i))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(al::replay(blocks.iter().map(|b| &b[..]), self.sb.al_extents))
    }

    fn check_al_index(&self, index: u32) -> io::Result<()> {
        if index >= self.layout.al_ring_blocks {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "activity-log block {index} out of range 0..{}",
                    self.layout.al_ring_blocks
                ),
            ));
        }
        Ok(())
    }

    /// Text for `hbadm dump-md`, in the spirit of `drbdmeta dump-md`.
    pub fn dump(&self) -> String {
        let sb = &self.sb;
        let l = &self.layout;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# hablock metadata of {} ({}, superblock at byte {} of {})",
            self.backing_path.display(),
            if l.internal { "internal" } else { "external" },
            l.sb_offset,
            self.md_path.display()
        );
        let _ = writeln!(s, "version \"v{}\";", super::superblock::VERSION);
        let _ = writeln!(s, "max-peers {};", l.max_peers);
        let _ = writeln!(s, "node-id {};", sb.node_id);
        let _ = writeln!(s, "device-uuid 0x{:016X};", sb.device_uuid);
        let _ = writeln!(s, "current-uuid 0x{:016X};", sb.gi.current);
        let _ = writeln!(s, "flags {};", sb.flags);
        for slot in 0..l.max_peers as usize {
            let p = &sb.peers[slot];
            let _ = writeln!(s, "peer[{slot}] {{");
            if p.node_id == NODE_ID_NONE {
                let _ = writeln!(s, "    node-id -1;");
            } else {
                let _ = writeln!(s, "    node-id {};", p.node_id);
            }
            let _ = writeln!(s, "    bitmap-index {slot};");
            let _ = writeln!(s, "    bitmap-uuid 0x{:016X};", sb.gi.bitmap[slot]);
            let _ = writeln!(s, "    bitmap-dagtag 0x{:016X};", p.dagtag);
            let _ = writeln!(s, "    flags {};", p.flags);
            let _ = writeln!(s, "    resync-pos {};", p.resync_pos);
            let _ = writeln!(s, "    la-peer-size {};", p.la_peer_size);
            let _ = writeln!(s, "}}");
        }
        let _ = write!(s, "history-uuids {{");
        for (i, h) in sb.gi.history.iter().enumerate() {
            if i % 4 == 0 {
                let _ = write!(s, "\n   ");
            }
            let _ = write!(s, " 0x{h:016X}");
        }
        let _ = writeln!(s, "\n}}");
        let _ = writeln!(s, "la-size {}; # bytes, {} sectors", sb.la_size, sb.la_size / 512);
        let _ = writeln!(s, "data-capacity {};", l.data_capacity);
        let _ = writeln!(s, "bm-byte-per-bit {};", l.bytes_per_bit);
        let _ = writeln!(s, "al-extents {};", sb.al_extents);
        let _ = writeln!(s, "al-extent-size {};", sb.al_extent_size);
        let _ = writeln!(s, "al-ring-blocks {};", l.al_ring_blocks);
        let _ = writeln!(s, "# md-offset {} md-size {}", l.md_offset, l.md_size);
        let _ = writeln!(
            s,
            "# al-offset {} bm-offset {} bm-slot-size {} bm-size {}",
            l.al_offset,
            l.bm_offset,
            l.bm_slot_size,
            l.bm_size()
        );
        let _ = writeln!(
            s,
            "# md-device-size {} backing-size {}",
            self.md_dev_size, self.backing_size
        );
        let _ = writeln!(s, "write-seq {};", sb.write_seq);
        let _ = writeln!(s, "created {};", sb.created);
        for slot in 0..self.bitmap.nslots() {
            let n = self.bitmap.count_set(slot);
            let bytes = self.bitmap.out_of_sync_bytes(slot);
            let pct = if self.data_size > 0 {
                bytes as f64 * 100.0 / self.data_size as f64
            } else {
                0.0
            };
            let _ = writeln!(s, "bitmap[{slot}] {{");
            let _ = writeln!(
                s,
                "    # out-of-sync {n} bits, {bytes} bytes ({pct:.1}%); ranges as \"offset length\" in bytes"
            );
            for (listed, (off, len)) in self.bitmap.set_ranges(slot).enumerate() {
                if listed == DUMP_MAX_RANGES {
                    let _ = writeln!(s, "    # ... more ranges not shown");
                    break;
                }
                let _ = writeln!(s, "    {off} {len};");
            }
            let _ = writeln!(s, "}}");
        }
        s
    }
}

fn layout_error(backing: &Path, e: LayoutError) -> MetaError {
    match e {
        LayoutError::BackingTooSmall { size, need } => MetaError::TooSmall {
            path: disp(backing),
            what: "backing device",
            size,
            need,
            hint: " (room for the metadata plus at least 4 KiB of data)".into(),
        },
        LayoutError::Param(p) => MetaError::InvalidOptions(p),
    }
}

#[cfg(test)]
mod tests {
    use super::super::al::{AlTransaction, AlUpdate};
    use super::super::superblock::MdFlags;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sized_file(dir: &tempfile::TempDir, name: &str, size: u64) -> PathBuf {
        let p = dir.path().join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    fn opts() -> CreateOptions {
        CreateOptions::default()
    }

    #[test]
    fn internal_create_open_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 64 * MIB + 123);
        let md = MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false).unwrap();
        let l = Layout::internal(64 * MIB + 123, 1, 4096, 8).unwrap();
        assert_eq!(md.data_size(), l.data_capacity);
        assert_eq!(md.data_size() % 4096, 0);
        assert_eq!(md.data_size(), 64 * MIB - (4096 + 32768 + 4096));
        let sb = md.superblock().clone();
        assert_eq!(sb.gi.current, super::super::gi::UUID_JUST_CREATED);
        assert!(sb.flags.has(MdFlags::AL_CLEAN));
        assert!(!sb.flags.has(MdFlags::CONSISTENT));
        drop(md);
        let md = MetaDisk::open(&b, &MetaLocation::Internal).unwrap();
        assert_eq!(md.superblock(), &sb);
        assert_eq!(md.bitmap().count_set(0), 0);
        assert_eq!(md.replay_al().unwrap().active_extents(), Vec::<u32>::new());
        let dump = md.dump();
        assert!(dump.contains("current-uuid 0x0000000000000004;"), "{dump}");
        assert!(dump.contains("bm-byte-per-bit 4096;"));
        assert!(dump.contains("out-of-sync 0 bits"));
    }

    #[test]
    fn external_create_open_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 256 * MIB);
        let need = super::super::layout::external_md_size(256 * MIB, 2, 4096, 8);
        let m = sized_file(&dir, "md", need);
        let loc = MetaLocation::External(m.clone());
        let o = CreateOptions {
            max_peers: 2,
            al_extents: 6216,
            node_id: 3,
        };
        let mut md = MetaDisk::create(&b, &loc, &o, false).unwrap();
        assert_eq!(md.data_size(), 256 * MIB);
        assert_eq!(md.bitmap().nslots(), 2);
        md.superblock_mut().gi.current = 0xabcdef00;
        md.superblock_mut().peers[1].node_id = 5;
        md.superblock_mut().flags.set(MdFlags::CONSISTENT, true);
        md.write_superblock().unwrap();
        let sb = md.superblock().clone();
        drop(md);
        let md = MetaDisk::open(&b, &loc).unwrap();
        assert_eq!(md.superblock(), &sb);
        assert_eq!(md.superblock().node_id, 3);
        assert_eq!(md.superblock().write_seq, 2);
        // The backing file is untouched by external metadata.
        assert_eq!(std::fs::metadata(&b).unwrap().len(), 256 * MIB);
        // Opening it as internal is refused clearly.
        assert!(MetaDisk::open(&b, &MetaLocation::Internal).is_err());
    }

    #[test]
    fn external_md_too_small_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 256 * MIB);
        let m = sized_file(&dir, "md", 4096);
        let need = super::super::layout::external_md_size(256 * MIB, 1, 4096, 8);
        match MetaDisk::create(&b, &MetaLocation::External(m.clone()), &opts(), false) {
            Err(e @ MetaError::TooSmall { .. }) => {
                let s = e.to_string();
                assert!(s.contains(&need.to_string()), "{s}");
                assert!(s.contains("truncate -s"), "{s}");
            }
            other => panic!("{other:?}"),
        }
        let missing = dir.path().join("nope");
        match MetaDisk::create(&b, &MetaLocation::External(missing), &opts(), false) {
            Err(e @ MetaError::NotFound { .. }) => assert!(e.to_string().contains("truncate -s")),
            other => panic!("{other:?}"),
        }
        // Internal create does not create the backing file.
        let nob = dir.path().join("no-backing");
        assert!(matches!(
            MetaDisk::create(&nob, &MetaLocation::Internal, &opts(), false),
            Err(MetaError::NotFound { .. })
        ));
        assert!(!nob.exists());
    }

    #[test]
    fn create_refuses_existing_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 16 * MIB);
        let first = MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false).unwrap();
        let uuid = first.superblock().device_uuid;
        first.bitmap().set_range(0, 0, MIB);
        first.flush_bitmap().unwrap();
        drop(first);
        match MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false) {
            Err(e @ MetaError::Exists { .. }) => assert!(e.to_string().contains("--force")),
            other => panic!("{other:?}"),
        }
        let md = MetaDisk::create(&b, &MetaLocation::Internal, &opts(), true).unwrap();
        assert_ne!(md.superblock().device_uuid, uuid);
        assert_eq!(md.bitmap().count_set(0), 0);
    }

    #[test]
    fn corrupt_byte_fails_with_checksum_error() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 16 * MIB);
        let md = MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false).unwrap();
        let sb_off = md.layout().sb_offset;
        drop(md);
        let f = OpenOptions::new().read(true).write(true).open(&b).unwrap();
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, sb_off + 0x200).unwrap();
        byte[0] ^= 0x10;
        f.write_all_at(&byte, sb_off + 0x200).unwrap();
        match MetaDisk::open(&b, &MetaLocation::Internal) {
            Err(
                e @ MetaError::Superblock {
                    source: DecodeError::Checksum { .. },
                    ..
                },
            ) => {
                let s = e.to_string();
                assert!(s.contains("checksum mismatch"), "{s}");
                assert!(s.contains("create-md --force"), "{s}");
            }
            other => panic!("{other:?}"),
        }
        // Corrupt metadata is not silently replaced either.
        assert!(matches!(
            MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false),
            Err(MetaError::WouldOverwrite { .. })
        ));
        MetaDisk::create(&b, &MetaLocation::Internal, &opts(), true).unwrap();
    }

    #[test]
    fn all_zero_is_no_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 16 * MIB);
        match MetaDisk::open(&b, &MetaLocation::Internal) {
            Err(e @ MetaError::NoMetadata { .. }) => {
                assert!(e.to_string().contains("hbadm create-md"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreign_and_drbd_magic() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 16 * MIB);
        let f = OpenOptions::new().write(true).open(&b).unwrap();
        let sb_off = 16 * MIB - 4096;
        f.write_all_at(b"some file system data", sb_off).unwrap();
        match MetaDisk::open(&b, &MetaLocation::Internal) {
            Err(
                e @ MetaError::Superblock {
                    source: DecodeError::Foreign { .. },
                    ..
                },
            ) => assert!(e.to_string().contains("not hablock metadata")),
            other => panic!("{other:?}"),
        }
        // Internal create would overwrite data: refused without force.
        assert!(matches!(
            MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false),
            Err(MetaError::WouldOverwrite { .. })
        ));
        let mut drbd = [0u8; 4096];
        drbd[60..64].copy_from_slice(&[0x83, 0x74, 0x02, 0x6b]);
        f.write_all_at(&drbd, sb_off).unwrap();
        match MetaDisk::open(&b, &MetaLocation::Internal) {
            Err(
                e @ MetaError::Superblock {
                    source: DecodeError::Drbd { .. },
                    ..
                },
            ) => assert!(e.to_string().contains("DRBD 8"), "{e}"),
            other => panic!("{other:?}"),
        }
        match MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false) {
            Err(e @ MetaError::WouldOverwrite { .. }) => assert!(e.to_string().contains("DRBD")),
            other => panic!("{other:?}"),
        }
        MetaDisk::create(&b, &MetaLocation::Internal, &opts(), true).unwrap();
    }

    #[test]
    fn backing_too_small() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 40 * 1024);
        match MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false) {
            Err(e @ MetaError::TooSmall { need, .. }) => {
                assert_eq!(need, 45056);
                assert!(e.to_string().contains("45056"));
            }
            other => panic!("{other:?}"),
        }
        let tiny = sized_file(&dir, "tiny", 100);
        assert!(matches!(
            MetaDisk::open(&tiny, &MetaLocation::Internal),
            Err(MetaError::TooSmall { .. })
        ));
    }

    #[test]
    fn bad_options() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 16 * MIB);
        for o in [
            CreateOptions { max_peers: 0, ..opts() },
            CreateOptions {
                max_peers: 32,
                ..opts()
            },
            CreateOptions {
                al_extents: 6,
                ..opts()
            },
            CreateOptions {
                al_extents: 7000,
                ..opts()
            },
            CreateOptions { node_id: 32, ..opts() },
        ] {
            assert!(matches!(
                MetaDisk::create(&b, &MetaLocation::Internal, &o, false),
                Err(MetaError::InvalidOptions(_))
            ));
        }
    }

    #[test]
    fn bitmap_flush_and_reopen_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 1 << 30);
        let o = CreateOptions { max_peers: 2, ..opts() };
        let md = MetaDisk::create(&b, &MetaLocation::Internal, &o, false).unwrap();
        let bm = md.bitmap();
        bm.set_range(0, 0, 3 * 4096);
        bm.set_range(0, 500 * MIB, 1);
        bm.set_range(1, 100 * MIB, 8 * MIB);
        bm.clear_range(0, 4096, 4096);
        assert_eq!(bm.dirty_pages(), 3);
        md.flush_bitmap().unwrap();
        assert_eq!(bm.dirty_pages(), 0);
        md.flush_bitmap().unwrap(); // nothing to do
        let ranges0: Vec<_> = bm.set_ranges(0).collect();
        assert_eq!(ranges0, vec![(0, 4096), (2 * 4096, 4096), (500 * MIB, 4096)]);
        // A set after the flush that is not flushed is lost on reopen (by design).
        bm.set_range(1, 0, 4096);
        drop(md);
        let md = MetaDisk::open(&b, &MetaLocation::Internal).unwrap();
        let bm = md.bitmap();
        assert_eq!(bm.set_ranges(0).collect::<Vec<_>>(), ranges0);
        assert_eq!(bm.count_set(0), 3);
        assert_eq!(bm.count_set(1), 2048);
        assert_eq!(bm.set_ranges(1).collect::<Vec<_>>(), vec![(100 * MIB, 8 * MIB)]);
        let dump = md.dump();
        assert!(dump.contains(&format!("    {} {};", 100 * MIB, 8 * MIB)), "{dump}");
        assert!(dump.contains("out-of-sync 3 bits, 12288 bytes"), "{dump}");
        // The data area is untouched by metadata writes.
        let f = File::open(&b).unwrap();
        let mut head = vec![0u8; 4096];
        f.read_exact_at(&mut head, md.data_size() - 4096).unwrap();
        assert!(head.iter().all(|&x| x == 0));
    }

    #[test]
    fn al_blocks_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 64 * MIB);
        let md = MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false).unwrap();
        let mut slots = vec![al::AL_FREE; 1237];
        slots[0] = 42;
        let t = AlTransaction::with_context(0, vec![AlUpdate { slot: 0, extent: 42 }], &slots);
        md.write_al_block(0, &t.encode().unwrap()).unwrap();
        assert!(md.write_al_block(8, &[0u8; 4096]).is_err());
        drop(md);
        let md = MetaDisk::open(&b, &MetaLocation::Internal).unwrap();
        assert_eq!(AlTransaction::decode(&md.read_al_block(0).unwrap()).unwrap(), Some(t));
        assert_eq!(md.replay_al().unwrap().active_extents(), vec![42]);
    }

    #[test]
    fn write_superblock_refuses_bad_changes() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 64 * MIB);
        let mut md = MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false).unwrap();
        md.superblock_mut().layout.al_offset += 4096;
        assert!(md.write_superblock().is_err());
        md.superblock_mut().layout = *md.layout();
        md.superblock_mut().la_size -= 4096;
        assert!(md.write_superblock().is_err());
        md.superblock_mut().la_size += 4096;
        md.superblock_mut().node_id = 77;
        assert!(md.write_superblock().is_err());
        md.superblock_mut().node_id = 0;
        md.write_superblock().unwrap();
    }

    #[test]
    fn internal_backing_resized() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 64 * MIB);
        MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false).unwrap();
        // Grown while down: the superblock is no longer at the end.
        File::options().write(true).open(&b).unwrap().set_len(80 * MIB).unwrap();
        match MetaDisk::open(&b, &MetaLocation::Internal) {
            Err(e @ MetaError::NoMetadata { .. }) => assert!(e.to_string().contains("enlarged")),
            other => panic!("{other:?}"),
        }
        // Back to the old size (plus a partial block): found again.
        File::options()
            .write(true)
            .open(&b)
            .unwrap()
            .set_len(64 * MIB + 100)
            .unwrap();
        MetaDisk::open(&b, &MetaLocation::Internal).unwrap();
        // Shrunk: the end of the device is data (here zeroes): refused.
        File::options().write(true).open(&b).unwrap().set_len(60 * MIB).unwrap();
        assert!(MetaDisk::open(&b, &MetaLocation::Internal).is_err());
    }

    #[test]
    fn external_backing_resized() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 64 * MIB);
        let m = sized_file(&dir, "md", MIB);
        let loc = MetaLocation::External(m.clone());
        MetaDisk::create(&b, &loc, &opts(), false).unwrap();
        // Grown: accepted, la-size kept.
        File::options()
            .write(true)
            .open(&b)
            .unwrap()
            .set_len(128 * MIB)
            .unwrap();
        assert_eq!(MetaDisk::open(&b, &loc).unwrap().data_size(), 64 * MIB);
        // Shrunk: refused.
        File::options().write(true).open(&b).unwrap().set_len(32 * MIB).unwrap();
        match MetaDisk::open(&b, &loc) {
            Err(e @ MetaError::Shrunk { .. }) => assert!(e.to_string().contains("shrank")),
            other => panic!("{other:?}"),
        }
        // External metadata truncated: refused.
        File::options().write(true).open(&b).unwrap().set_len(64 * MIB).unwrap();
        File::options().write(true).open(&m).unwrap().set_len(8192).unwrap();
        assert!(matches!(MetaDisk::open(&b, &loc), Err(MetaError::TooSmall { .. })));
    }

    #[test]
    fn resource_conveniences() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 64 * MIB);
        let o = CreateOptions {
            max_peers: 2,
            node_id: 1,
            ..opts()
        };
        let mut md = MetaDisk::create(&b, &MetaLocation::Internal, &o, false).unwrap();
        assert!(md.is_just_created());
        assert_eq!(md.disk_state(), MdDiskState::Inconsistent);
        assert!(!md.was_primary_unclean());
        assert_eq!(md.peer_slot(0), None);
        assert_eq!(md.assign_peer_slot(1), None); // own id
        assert_eq!(md.assign_peer_slot(0), Some(0));
        assert_eq!(md.assign_peer_slot(2), Some(1));
        assert_eq!(md.assign_peer_slot(0), Some(0));
        assert_eq!(md.assign_peer_slot(3), None); // full
        assert_eq!(md.peer_slot(2), Some(1));
        md.start_new_generation();
        assert!(!md.is_just_created());
        assert_eq!(md.superblock().gi.current & 1, 1);
        assert_eq!(md.disk_state(), MdDiskState::UpToDate);
        md.set_primary(true);
        md.set_clean(false);
        md.write_superblock().unwrap();
        let gi_line = md.gi_string();
        assert_eq!(gi_line.split(':').count(), 1 + 2 + 2 + 5, "{gi_line}");
        assert!(gi_line.ends_with(":1:1:1:0:0"), "{gi_line}");
        drop(md);
        // "Crash": reopen without a clean stop.
        let mut md = MetaDisk::open(&b, &MetaLocation::Internal).unwrap();
        assert!(md.was_primary_unclean());
        assert_eq!(md.peer_slot(2), Some(1));
        assert_eq!(md.disk_state(), MdDiskState::UpToDate);
        // A second generation while peers are away: the previous one is kept
        // as their bitmap UUID.
        let prev = md.superblock().gi.current;
        md.start_new_generation();
        assert_eq!(md.superblock().gi.bitmap[0], prev);
        assert_eq!(md.superblock().gi.bitmap[1], prev);
        md.set_primary(false);
        md.set_clean(true);
        md.write_superblock().unwrap();
        drop(md);
        let md = MetaDisk::open(&b, &MetaLocation::Internal).unwrap();
        assert!(!md.was_primary_unclean());
    }

    #[test]
    fn newer_version_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let b = sized_file(&dir, "backing", 16 * MIB);
        let md = MetaDisk::create(&b, &MetaLocation::Internal, &opts(), false).unwrap();
        let off = md.layout().sb_offset;
        drop(md);
        let f = OpenOptions::new().write(true).open(&b).unwrap();
        f.write_all_at(&9u32.to_le_bytes(), off + 8).unwrap();
        match MetaDisk::open(&b, &MetaLocation::Internal) {
            Err(e @ MetaError::Superblock { .. }) => {
                assert!(e.to_string().contains("upgrade hablock"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
