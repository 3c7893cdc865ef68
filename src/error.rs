//! The one way paddock turns an error and its sources into a line of text, for
//! logs and for the reasons stored with runs, grants and outbox entries.

/// The error and its sources, joined with `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_every_source() {
        let inner = std::io::Error::other("disk on fire");
        let outer = crate::store::StoreError::Open { path: "/x.db".into(), source: rusqlite::Error::InvalidQuery };
        assert_eq!(super::chain(&inner), "disk on fire");
        assert!(super::chain(&outer).starts_with("cannot open the store at /x.db: "), "{}", super::chain(&outer));
    }
}
