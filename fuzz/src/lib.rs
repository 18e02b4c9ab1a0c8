//! The parsers that the fuzz targets exercise, compiled from the daemon's own source
//! files (`src/secret.rs`, `src/types/dedup.rs` and four modules of `src/webhook/`), laid out as in the
//! daemon so that their `crate::` paths resolve. They need only a few small crates,
//! so an instrumented build skips the daemon's server, TLS and SQLite dependencies.

#[path = "../../src/secret.rs"]
pub mod secret;

/// The dedup keys of the daemon's `src/types/`.
#[path = "../../src/types"]
pub mod types {
    mod dedup;
    pub use dedup::{DedupKey, DedupKeys};
}

/// The request parsers of the daemon's `src/webhook/`.
#[path = "../../src/webhook"]
pub mod webhook {
    pub mod challenge;
    pub mod client_cn;
    pub mod conversation;
    pub mod identity;
    pub mod items;
    pub mod json;
    pub mod raw;
    pub mod signature;
}
