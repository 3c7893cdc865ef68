pub mod donor;
pub mod sshd;
