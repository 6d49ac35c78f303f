//! One `router()` per resource, merged in `crate::router`.

pub mod ops;
pub mod sessions;
pub mod settlement;
