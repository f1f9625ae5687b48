//! On-disk metadata (DRBD style): superblock, generation identifiers, dirty bitmap,
//! activity log area. Format documented byte by byte in docs/metadata.md.
//!
//! One file per concern:
//!
//! * [`layout`]: where the areas go (pure arithmetic, the size formula);
//! * [`superblock`]: the 4 KiB superblock codec and its flags;
//! * [`gi`]: generation identifiers and the handshake rules (pure);
//! * [`bitmap`]: the lock-free in-memory bitmap, one slot per peer;
//! * [`al`]: the activity-log transaction codec and ring replay (pure);
//! * [`disk`]: [`MetaDisk`], which reads and writes all of it.
//!
//! CONTRACT (the resource layer calls exactly this; more is available):
//!
//! ```ignore
//! pub enum MetaLocation { Internal, External(PathBuf) }
//! pub struct CreateOptions { pub max_peers: u32, pub al_extents: u32, pub node_id: u32 } // + Default
//! pub struct MetaDisk { .. }            // owns its own std::fs::File handles (pread/pwrite)
//! impl MetaDisk {
//!   /// Refuses (MetaError::Exists) when valid metadata is already there, unless force.
//!   pub fn create(backing: &Path, loc: &MetaLocation, opts: &CreateOptions, force: bool) -> Result<MetaDisk, MetaError>;
//!   /// Opens and validates; corrupt/foreign superblock => clear MetaError, never re-init.
//!   pub fn open(backing: &Path, loc: &MetaLocation) -> Result<MetaDisk, MetaError>;
//!   pub fn data_size(&self) -> u64;     // bytes usable by the device (multiple of 4096)
//!   pub fn superblock(&self) -> &Superblock;   // flags, gi, sizes
//!   pub fn superblock_mut(&mut self) -> &mut Superblock;
//!   pub fn write_superblock(&mut self) -> std::io::Result<()>;   // durable on return
//!   pub fn bitmap(&self) -> &Bitmap;    // Bitmap: lock-free set_range(&self, slot, off, len)
//!   pub fn flush_bitmap(&self) -> std::io::Result<()>;  // writes dirty pages, durable
//!   pub fn dump(&self) -> String;       // hbadm dump-md text
//! }
//! ```
//!
//! The bitmap API takes a peer slot index: `bitmap().set_range(slot, offset, len)`;
//! slot `s` pairs with `superblock().peers[s]` and `superblock().gi.bitmap[s]`.

pub mod al;
pub mod bitmap;
pub mod disk;
pub mod gi;
pub mod layout;
pub mod superblock;

pub use al::{AlTransaction, AlUpdate};
pub use bitmap::Bitmap;
pub use disk::{device_size, CreateOptions, MdDiskState, MetaDisk, MetaError, MetaLocation};
pub use gi::{uuid_compare, Generations, SyncDecision, UUID_JUST_CREATED, UUID_PRIMARY};
pub use layout::Layout;
pub use superblock::{DecodeError, MdFlags, PeerFlags, PeerSlot, Superblock};
