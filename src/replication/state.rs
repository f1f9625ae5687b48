//! DRBD's state names (REFERENCE.md §1.10), with their wire codes.
//!
//! `Display` prints the DRBD spelling, so `hbadm status` can show them as `drbdadm` does.

use std::fmt;

/// A node's role for a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Secondary,
    Primary,
    /// The peer's role while not connected.
    Unknown,
}

/// A disk's state (the local one, or the peer's as last reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiskState {
    Diskless,
    Attaching,
    Detaching,
    Failed,
    Negotiating,
    /// Mid-sync or never synced: unusable, cannot be promoted.
    Inconsistent,
    /// Consistent but known stale: cannot be promoted without force.
    Outdated,
    /// The peer's disk while not connected.
    DUnknown,
    /// Consistent, freshness unknown (not connected).
    Consistent,
    UpToDate,
}

/// The connection to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Not trying to connect (after `disconnect`, split brain, or an auth failure).
    StandAlone,
    /// Closing on purpose.
    Disconnecting,
    /// Waiting for the driver to bring up a transport.
    Connecting,
    /// Transport up, exchanging Hello and authentication.
    Handshaking,
    /// Authenticated, exchanging sizes, UUIDs and states.
    Negotiating,
    Connected,
}

/// Replication state towards the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplState {
    /// Not connected.
    Off,
    /// Connected, in sync (or nothing to sync).
    Established,
    /// Exchanging bitmaps before a resync as source.
    WFBitMapS,
    /// Exchanging bitmaps before a resync as target.
    WFBitMapT,
    SyncSource,
    SyncTarget,
    PausedSyncS,
    PausedSyncT,
}

impl ReplState {
    /// True while a resync (or its preparation) runs with this node as source.
    pub fn is_source(self) -> bool {
        matches!(
            self,
            ReplState::WFBitMapS | ReplState::SyncSource | ReplState::PausedSyncS
        )
    }
    /// True while a resync (or its preparation) runs with this node as target.
    pub fn is_target(self) -> bool {
        matches!(
            self,
            ReplState::WFBitMapT | ReplState::SyncTarget | ReplState::PausedSyncT
        )
    }
}

macro_rules! display_as_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    )*};
}
display_as_debug!(Role, DiskState, ConnState, ReplState);

impl Role {
    /// Wire code (see docs/replication.md).
    pub fn code(self) -> u8 {
        match self {
            Role::Secondary => 0,
            Role::Primary => 1,
            Role::Unknown => 2,
        }
    }
    pub fn from_code(c: u8) -> Option<Role> {
        [Role::Secondary, Role::Primary, Role::Unknown]
            .into_iter()
            .find(|r| r.code() == c)
    }
}

impl DiskState {
    const ALL: [DiskState; 10] = [
        DiskState::Diskless,
        DiskState::Attaching,
        DiskState::Detaching,
        DiskState::Failed,
        DiskState::Negotiating,
        DiskState::Inconsistent,
        DiskState::Outdated,
        DiskState::DUnknown,
        DiskState::Consistent,
        DiskState::UpToDate,
    ];
    /// Wire code (see docs/replication.md): the index in DRBD's order.
    pub fn code(self) -> u8 {
        DiskState::ALL.iter().position(|d| *d == self).expect("listed") as u8
    }
    pub fn from_code(c: u8) -> Option<DiskState> {
        DiskState::ALL.get(c as usize).copied()
    }
    /// Whether the data is consistent (usable as a whole).
    pub fn is_consistent(self) -> bool {
        matches!(self, DiskState::Outdated | DiskState::Consistent | DiskState::UpToDate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_names() {
        for d in DiskState::ALL {
            assert_eq!(DiskState::from_code(d.code()), Some(d));
        }
        for r in [Role::Secondary, Role::Primary, Role::Unknown] {
            assert_eq!(Role::from_code(r.code()), Some(r));
        }
        assert_eq!(DiskState::from_code(200), None);
        assert_eq!(ReplState::SyncSource.to_string(), "SyncSource");
        assert_eq!(DiskState::UpToDate.to_string(), "UpToDate");
    }
}
