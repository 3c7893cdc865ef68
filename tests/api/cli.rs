//! The real `paddock` binary against a server on port 0 serving the router.
