//! Generation identifiers (GIs), as DRBD keeps them.
//!
//! A GI is a random 64-bit number naming one "generation" of the data. Its
//! lowest bit says whether the node was primary when the generation began
//! ([`UUID_PRIMARY`]); comparisons ignore that bit. A node keeps:
//!
//! * the **current** UUID: the generation of its data now;
//! * one **bitmap** UUID per peer slot: the generation at which the node
//!   started to record, in that slot's bitmap, the blocks the peer lacks
//!   (zero while the peer is in sync / connected);
//! * **history** UUIDs: older generations, newest first, used to recognise
//!   a common ancestor on handshake.
//!
//! Everything in this file is pure so replication can use it in its sans-IO
//! core and the simulator.

use super::layout::MAX_PEER_SLOTS;

/// Lowest bit of a UUID: the node was primary when it generated it.
pub const UUID_PRIMARY: u64 = 1;
/// Current UUID of a device whose metadata was just created (DRBD's
/// `UUID_JUST_CREATED`): it has never been consistent.
pub const UUID_JUST_CREATED: u64 = 4;
/// Number of history UUIDs kept.
pub const HISTORY_UUIDS: usize = 32;

/// Strips the role bit, for comparisons.
pub const fn uuid_value(u: u64) -> u64 {
    u & !UUID_PRIMARY
}

/// True for a current UUID that names no data yet (zero or just created).
pub const fn uuid_is_empty(u: u64) -> bool {
    let v = uuid_value(u);
    v == 0 || v == UUID_JUST_CREATED
}

/// A fresh random UUID: never zero, never [`UUID_JUST_CREATED`], role bit as asked.
pub fn random_uuid<R: rand::Rng + ?Sized>(rng: &mut R, primary: bool) -> u64 {
    loop {
        let v = uuid_value(rng.gen::<u64>());
        if !uuid_is_empty(v) {
            return if primary { v | UUID_PRIMARY } else { v };
        }
    }
}

/// The generation identifiers of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generations {
    /// Current UUID.
    pub current: u64,
    /// Bitmap UUID per peer slot (index = bitmap slot).
    pub bitmap: [u64; MAX_PEER_SLOTS],
    /// History UUIDs, newest first; zero entries are unused and trail.
    pub history: [u64; HISTORY_UUIDS],
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            current: UUID_JUST_CREATED,
            bitmap: [0; MAX_PEER_SLOTS],
            history: [0; HISTORY_UUIDS],
        }
    }
}

impl Generations {
    /// The set of a freshly created device: current = [`UUID_JUST_CREATED`], rest zero.
    pub fn just_created() -> Self {
        Self::default()
    }

    /// Pushes `uuid` at the front of the history (dropping the oldest). Zero and
    /// a value equal to the newest entry are ignored.
    pub fn push_history(&mut self, uuid: u64) {
        if uuid_value(uuid) == 0 || uuid_value(self.history[0]) == uuid_value(uuid) {
            return;
        }
        self.history.copy_within(0..HISTORY_UUIDS - 1, 1);
        self.history[0] = uuid;
    }

    /// Starts a new data generation (DRBD's `new-current-uuid`): on the first
    /// write after the node lost a peer as primary, or when a disconnected
    /// node is promoted.
    ///
    /// For every slot in `away` (peers that will miss the writes of the new
    /// generation) whose bitmap UUID is zero, the old current UUID becomes the
    /// bitmap UUID: that slot's bitmap from now on tracks the blocks changed
    /// since the old generation. A slot whose bitmap UUID is already set keeps
    /// it (its bitmap already tracks changes since an older generation). When
    /// no slot took the old current UUID it is pushed to the history, so it
    /// is never forgotten. The new current is `fresh` with the role bit set
    /// when `primary`.
    pub fn new_current_uuid(&mut self, fresh: u64, primary: bool, away: &[usize]) {
        let old = self.current;
        let mut kept = false;
        for &slot in away {
            if slot < MAX_PEER_SLOTS && self.bitmap[slot] == 0 && !uuid_is_empty(old) {
                self.bitmap[slot] = old;
                kept = true;
            }
        }
        if !kept && !uuid_is_empty(old) {
            self.push_history(old);
        }
        let v = uuid_value(fresh);
        self.current = if primary { v | UUID_PRIMARY } else { v };
    }

    /// The peer in `slot` is in sync again (resync finished as source, or it
    /// reconnected with nothing to do): its bitmap UUID moves to the history.
    pub fn clear_bitmap_uuid(&mut self, slot: usize) {
        let old = std::mem::take(&mut self.bitmap[slot]);
        self.push_history(old);
    }

    /// A resync with this node as target finished: adopt the source's current
    /// UUID (DRBD: the target takes over the source's UUID set). Our old
    /// current goes to history.
    pub fn adopt_sync_source(&mut self, source_current: u64) {
        if uuid_value(self.current) != uuid_value(source_current) {
            let old = self.current;
            if !uuid_is_empty(old) {
                self.push_history(old);
            }
            self.current = uuid_value(source_current);
        }
    }

    /// Sets or clears the role bit of the current UUID.
    pub fn set_primary_bit(&mut self, primary: bool) {
        self.current = if primary {
            self.current | UUID_PRIMARY
        } else {
            uuid_value(self.current)
        };
    }

    /// The view of this set towards the peer in `slot`, for [`uuid_compare`].
    pub fn view(&self, slot: usize) -> GiView<'_> {
        GiView {
            current: self.current,
            bitmap: self.bitmap[slot],
            history: &self.history,
        }
    }
}

/// What one side presents on handshake towards one peer.
#[derive(Debug, Clone, Copy)]
pub struct GiView<'a> {
    pub current: u64,
    /// Bitmap UUID towards the other side.
    pub bitmap: u64,
    pub history: &'a [u64],
}

/// The decision of [`uuid_compare`], seen from "me".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDecision {
    /// Rule 1: both sides were just created; nothing to sync, the operator
    /// must start it (`primary --force` or `new-current-uuid`).
    BothEmpty,
    /// Rule 2: the peer is empty: full sync, I am the source.
    FullSyncSource,
    /// Rule 2 (mirror) or rule 5: full sync, I am the target.
    FullSyncTarget,
    /// Rule 3: same generation, nothing to do.
    NoSync,
    /// Rule 4: my bitmap UUID is the peer's current: bitmap resync, I am the source.
    BitmapSource,
    /// Rule 4 (mirror): bitmap resync, I am the target.
    BitmapTarget,
    /// Rule 6: split brain with a common ancestor: after-sb policies apply.
    SplitBrainCommonAncestor,
    /// Rule 7: split brain, ancestry only found in history: disconnect,
    /// manual resolution.
    SplitBrainUnrelated,
    /// Rule 8: unrelated data: disconnect.
    UnrelatedData,
}

impl SyncDecision {
    /// The same decision seen from the peer.
    pub fn mirror(self) -> SyncDecision {
        use SyncDecision::*;
        match self {
            FullSyncSource => FullSyncTarget,
            FullSyncTarget => FullSyncSource,
            BitmapSource => BitmapTarget,
            BitmapTarget => BitmapSource,
            other => other,
        }
    }
}

fn in_history(u: u64, history: &[u64]) -> bool {
    let v = uuid_value(u);
    v != 0 && history.iter().any(|&h| uuid_value(h) == v)
}

/// The handshake rules (REFERENCE.md §1.2), applied in order:
///
/// 1. both current UUIDs empty: [`SyncDecision::BothEmpty`];
/// 2. one side empty: full sync from the non-empty side;
/// 3. current UUIDs equal: no sync;
/// 4. my bitmap UUID equals the peer's current: bitmap resync, me source
///    (mirrored: peer's bitmap equals my current, me target);
/// 5. my current is in the peer's history: full resync, me target
///    (mirrored: the peer's current in my history, me source);
/// 6. current UUIDs differ but bitmap UUIDs match (non-zero): split brain
///    with a common ancestor;
/// 7. a history or bitmap UUID of mine equals one of the peer's: split brain,
///    unrelated ancestry;
/// 8. nothing matches: unrelated data.
///
/// The role bit is ignored everywhere.
pub fn uuid_compare(me: &GiView<'_>, peer: &GiView<'_>) -> SyncDecision {
    use SyncDecision::*;
    let (mc, pc) = (uuid_value(me.current), uuid_value(peer.current));
    let (mb, pb) = (uuid_value(me.bitmap), uuid_value(peer.bitmap));
    let (me_empty, peer_empty) = (uuid_is_empty(mc), uuid_is_empty(pc));
    if me_empty && peer_empty {
        return BothEmpty;
    }
    if peer_empty {
        return FullSyncSource;
    }
    if me_empty {
        return FullSyncTarget;
    }
    if mc == pc {
        return NoSync;
    }
    if mb != 0 && mb == pc {
        return BitmapSource;
    }
    if pb != 0 && pb == mc {
        return BitmapTarget;
    }
    if in_history(mc, peer.history) {
        return FullSyncTarget;
    }
    if in_history(pc, me.history) {
        return FullSyncSource;
    }
    if mb != 0 && mb == pb {
        return SplitBrainCommonAncestor;
    }
    let mine = me.history.iter().copied().chain([mb]);
    let theirs: Vec<u64> = peer.history.iter().copied().chain([pb]).collect();
    for m in mine {
        if in_history(m, &theirs) {
            return SplitBrainUnrelated;
        }
    }
    UnrelatedData
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_uuid_properties() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let u = random_uuid(&mut rng, false);
            assert_eq!(u & 1, 0);
            assert!(!uuid_is_empty(u));
            assert_eq!(random_uuid(&mut rng, true) & 1, 1);
        }
    }

    #[test]
    fn new_current_moves_current_to_bitmap_of_away_peers() {
        let mut g = Generations::just_created();
        g.current = 0x1000;
        g.new_current_uuid(0x2000, true, &[0]);
        assert_eq!(g.current, 0x2001);
        assert_eq!(g.bitmap[0], 0x1000);
        assert_eq!(g.history[0], 0);
        // A second new generation while the peer is still away keeps the bitmap
        // UUID (the bitmap tracks changes since 0x1000) and archives 0x2001.
        g.new_current_uuid(0x3000, true, &[0]);
        assert_eq!(g.current, 0x3001);
        assert_eq!(g.bitmap[0], 0x1000);
        assert_eq!(g.history[0], 0x2001);
        // Resync finished: the bitmap UUID goes to history.
        g.clear_bitmap_uuid(0);
        assert_eq!(g.bitmap[0], 0);
        assert_eq!(&g.history[..2], &[0x1000, 0x2001]);
    }

    #[test]
    fn new_current_from_just_created_archives_nothing() {
        let mut g = Generations::just_created();
        g.new_current_uuid(0x5000, true, &[0, 1]);
        assert_eq!(g.current, 0x5001);
        assert_eq!(g.bitmap[0], 0);
        assert_eq!(g.history[0], 0);
    }

    #[test]
    fn history_is_bounded_newest_first() {
        let mut g = Generations::default();
        for i in 1..=40u64 {
            g.push_history(i << 8);
        }
        assert_eq!(g.history[0], 40 << 8);
        assert_eq!(g.history[HISTORY_UUIDS - 1], 9 << 8);
        g.push_history(40 << 8 | 1); // same value, other role bit: ignored
        assert_eq!(g.history[1], 39 << 8);
    }

    #[test]
    fn adopt_sync_source() {
        let mut g = Generations {
            current: 0x1110,
            ..Default::default()
        };
        g.adopt_sync_source(0x2221);
        assert_eq!(g.current, 0x2220);
        assert_eq!(g.history[0], 0x1110);
    }

    fn parse_uuid(s: &str) -> u64 {
        if s == "-" {
            0
        } else {
            u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
        }
    }

    fn parse_side(s: &str) -> (u64, u64, Vec<u64>) {
        let f: Vec<&str> = s.split_whitespace().collect();
        let hist = if f.len() > 2 {
            f[2].split(',').map(parse_uuid).collect()
        } else {
            vec![]
        };
        (parse_uuid(f[0]), parse_uuid(f[1]), hist)
    }

    fn parse_decision(s: &str) -> SyncDecision {
        use SyncDecision::*;
        match s {
            "both-empty" => BothEmpty,
            "full-source" => FullSyncSource,
            "full-target" => FullSyncTarget,
            "no-sync" => NoSync,
            "bitmap-source" => BitmapSource,
            "bitmap-target" => BitmapTarget,
            "split-brain-common" => SplitBrainCommonAncestor,
            "split-brain-unrelated" => SplitBrainUnrelated,
            "unrelated" => UnrelatedData,
            other => panic!("unknown decision {other}"),
        }
    }

    /// Each line: `my-current my-bitmap [my-history,..] | peer-current
    /// peer-bitmap [peer-history,..] => decision  # rule`. `-` is zero.
    const TABLE: &str = "
        4    -    | 4    -          => both-empty      # 1
        -    -    | 4    -          => both-empty      # 1 (zero counts as empty)
        a0   -    | 4    -          => full-source     # 2
        4    -    | a1   -          => full-target     # 2 mirrored
        a0   -    | a1   -          => no-sync         # 3 (role bit ignored)
        b1   a0   | a0   -          => bitmap-source   # 4
        a0   -    | b0   a1         => bitmap-target   # 4 mirrored
        a0   -  c0 | b0  -  a0,d0   => full-target     # 5
        b0   -  a0,d0 | a0  -  c0   => full-source     # 5 mirrored
        b0   a0   | c0   a0         => split-brain-common     # 6
        b0   e0 f0 | c0  d0 f0      => split-brain-unrelated  # 7
        b0   e0 f0 | c0  d0 e0      => split-brain-unrelated  # 7 (bitmap in history)
        b0   e0 f0 | c0  d0 10      => unrelated       # 8
        b0   -    | c0   -          => unrelated       # 8
    ";

    #[test]
    fn uuid_compare_table() {
        for line in TABLE.lines() {
            let line = line.split('#').next().unwrap().trim();
            if line.is_empty() {
                continue;
            }
            let (sides, want) = line.split_once("=>").unwrap();
            let (me, peer) = sides.split_once('|').unwrap();
            let (mc, mb, mh) = parse_side(me);
            let (pc, pb, ph) = parse_side(peer);
            let want = parse_decision(want.trim());
            let me = GiView {
                current: mc,
                bitmap: mb,
                history: &mh,
            };
            let peer = GiView {
                current: pc,
                bitmap: pb,
                history: &ph,
            };
            assert_eq!(uuid_compare(&me, &peer), want, "line: {line}");
            // The peer must reach the mirrored decision.
            assert_eq!(uuid_compare(&peer, &me), want.mirror(), "mirrored line: {line}");
        }
    }

    #[test]
    fn generations_view_feeds_compare() {
        // Primary loses its peer, writes, peer comes back: bitmap resync.
        let mut p = Generations {
            current: 0xabc0,
            ..Default::default()
        };
        let mut s = p.clone();
        p.new_current_uuid(0xdef0, true, &[0]);
        assert_eq!(uuid_compare(&p.view(0), &s.view(0)), SyncDecision::BitmapSource);
        // After the resync: source clears its bitmap uuid, target adopts.
        p.clear_bitmap_uuid(0);
        s.adopt_sync_source(p.current);
        assert_eq!(uuid_compare(&p.view(0), &s.view(0)), SyncDecision::NoSync);
    }
}
