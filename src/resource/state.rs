//! The states an operator reads in `hbadm status`, named as DRBD names them.

use std::fmt;

/// A node's role for a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Secondary,
    /// Not up on this node (drbdadm says "Unconfigured").
    Unconfigured,
}

/// The local disk's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskState {
    Diskless,
    Attaching,
    Inconsistent,
    Outdated,
    Consistent,
    UpToDate,
}

/// The connection to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    StandAlone,
    Connecting,
    Connected,
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
display_as_debug!(Role, DiskState, ConnState);

impl DiskState {
    /// Whether a node with this disk may become Primary on its own data.
    pub fn may_promote(self) -> bool {
        matches!(self, DiskState::UpToDate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_drbd() {
        assert_eq!(Role::Primary.to_string(), "Primary");
        assert_eq!(DiskState::UpToDate.to_string(), "UpToDate");
        assert_eq!(ConnState::StandAlone.to_string(), "StandAlone");
        assert!(!DiskState::Inconsistent.may_promote());
        assert!(DiskState::UpToDate.may_promote());
    }
}
