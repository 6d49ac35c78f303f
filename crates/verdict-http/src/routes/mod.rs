//! One `router()` per resource, merged in `crate::router`.

pub mod admin;
pub mod insight;
pub mod ops;
pub mod presence;
pub mod runs;
pub mod sessions;
pub mod settlement;
