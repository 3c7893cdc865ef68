//! The lifecycle of one VM as an explicit enum with transition guards; its
//! text form is what the store's `vms.state` column holds.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    /// Asked for; waiting for a host with room.
    Requested,
    /// A host, port and (for disk images) overlay path are reserved.
    Placed,
    /// The domain exists on the host (its overlay, if any, too).
    Defined,
    /// Started; waiting for its SSH port to answer.
    Booting,
    /// SSH answers; a run may use it.
    Ready,
    /// Being shut down and removed.
    Stopping,
    /// Nothing of it is left on the host.
    Gone,
    /// A step failed; it still has to be cleaned up (→ `Stopping`).
    Failed,
}

impl VmState {
    pub const ALL: [VmState; 8] = [
        VmState::Requested,
        VmState::Placed,
        VmState::Defined,
        VmState::Booting,
        VmState::Ready,
        VmState::Stopping,
        VmState::Gone,
        VmState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Requested => "requested",
            VmState::Placed => "placed",
            VmState::Defined => "defined",
            VmState::Booting => "booting",
            VmState::Ready => "ready",
            VmState::Stopping => "stopping",
            VmState::Gone => "gone",
            VmState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        VmState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether `self → next` is a legal transition.
    pub fn can_become(self, next: VmState) -> bool {
        use VmState::*;
        match self {
            Requested => matches!(next, Placed | Failed | Gone),
            Placed => matches!(next, Defined | Failed | Stopping),
            Defined => matches!(next, Booting | Failed | Stopping),
            Booting => matches!(next, Ready | Failed | Stopping),
            Ready => matches!(next, Stopping | Failed),
            Stopping => matches!(next, Gone | Failed),
            Failed => matches!(next, Stopping | Gone),
            Gone => false,
        }
    }

    /// Whether the VM may be holding host resources (a domain, an overlay, a port).
    pub fn holds_resources(self) -> bool {
        !matches!(self, VmState::Requested | VmState::Gone)
    }

    pub fn can_stop(self) -> bool {
        self.can_become(VmState::Stopping)
    }

    pub fn can_hold(self) -> bool {
        self == VmState::Ready
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for s in VmState::ALL {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
        }
        assert_eq!(VmState::parse("running"), None);
    }

    #[test]
    fn happy_path_is_legal_and_gone_is_final() {
        use VmState::*;
        let path = [Requested, Placed, Defined, Booting, Ready, Stopping, Gone];
        for w in path.windows(2) {
            assert!(w[0].can_become(w[1]), "{} → {}", w[0], w[1]);
        }
        for s in VmState::ALL {
            assert!(!Gone.can_become(s));
        }
        assert!(!Ready.can_become(Booting));
        assert!(!Requested.can_become(Ready));
        assert!(Booting.can_become(Failed) && Failed.can_become(Stopping));
        assert!(Ready.can_hold() && !Booting.can_hold());
    }
}
