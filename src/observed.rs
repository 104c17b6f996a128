//! The observed model: what spoolkeeper saw on the hosts, as plain serialisable values.
//!
//! Pure data: no I/O here. Adapters build these values from command output; the planner
//! reads them. Times are UTC instants (`jiff::Timestamp`), already corrected to the
//! controller's clock where a host clock offset is known.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One ZFS snapshot of a dataset, as listed by `zfs get -Hp -r`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The part after `@`.
    pub name: String,
    /// The snapshot's `guid` property: identical on both sides of a send/receive, which is
    /// how replicas are matched (names can collide, guids do not).
    pub guid: u64,
    /// The `creation` property (seconds precision).
    pub creation: Timestamp,
    /// `createtxg`, where the host reports it; orders snapshots created in the same second.
    pub createtxg: Option<u64>,
    /// `userrefs`: the number of holds on it. A held snapshot is never destroyed.
    pub userrefs: u32,
    /// `used`, bytes.
    pub used: u64,
}
