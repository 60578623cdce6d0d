//! Choosing an endpoint for a request: immutable per-Service snapshots and lock-free pickers.

mod schedule;
mod snapshot;

pub use schedule::WeightedSchedule;
pub use snapshot::{
    hash_bytes, Bucket, HealthOptions, NoEndpoint, Pick, ServiceSnapshot, SnapshotMode, SpillRoute,
};
