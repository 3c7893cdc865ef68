//! A grant's lifecycle as an explicit enum with transition guards; its text
//! form is what the store's `access_requests.state` column holds.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantState {
    /// Waiting for an admin.
    Pending,
    /// Approved; the VM and certificates are being prepared.
    Approved,
    /// The user can log in until the grant's end.
    Active,
    /// Ended at its end time.
    Expired,
    /// Ended early by its user or an admin.
    Revoked,
    /// Refused by an admin.
    Denied,
    /// Approved, but no VM or certificate could be made for it.
    Failed,
}

impl GrantState {
    pub const ALL: [GrantState; 7] = [
        GrantState::Pending,
        GrantState::Approved,
        GrantState::Active,
        GrantState::Expired,
        GrantState::Revoked,
        GrantState::Denied,
        GrantState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Pending => "pending",
            GrantState::Approved => "approved",
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
            GrantState::Denied => "denied",
            GrantState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<GrantState> {
        GrantState::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// Whether nothing more will happen to a grant in this state.
    pub fn is_final(self) -> bool {
        match self {
            GrantState::Expired | GrantState::Revoked | GrantState::Denied | GrantState::Failed => true,
            GrantState::Pending | GrantState::Approved | GrantState::Active => false,
        }
    }

    /// Whether the grant holds (or is about to hold) a VM and certificates.
    pub fn is_live(self) -> bool {
        matches!(self, GrantState::Approved | GrantState::Active)
    }

    /// Whether `self → next` is a legal transition.
    pub fn can_become(self, next: GrantState) -> bool {
        use GrantState::*;
        match self {
            Pending => matches!(next, Approved | Denied | Revoked),
            // An approved grant whose VM is still booting can be revoked or reach its end.
            Approved => matches!(next, Active | Failed | Revoked | Expired),
            Active => matches!(next, Expired | Revoked),
            Expired | Revoked | Denied | Failed => false,
        }
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for s in GrantState::ALL {
            assert_eq!(GrantState::parse(s.as_str()), Some(s));
        }
        assert_eq!(GrantState::parse("nope"), None);
    }

    #[test]
    fn final_states_go_nowhere() {
        for from in GrantState::ALL.into_iter().filter(|s| s.is_final()) {
            for to in GrantState::ALL {
                assert!(!from.can_become(to), "{from} → {to}");
            }
        }
        assert!(GrantState::Pending.can_become(GrantState::Approved));
        assert!(GrantState::Active.can_become(GrantState::Expired));
        assert!(!GrantState::Pending.can_become(GrantState::Active));
        assert!(!GrantState::Active.can_become(GrantState::Pending));
    }
}
