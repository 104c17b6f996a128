//! Pure decisions, the clock injected: which snapshots retention keeps, what replication
//! sends, what the archive may purge and must replay, RPO verdicts, the replay window and the
//! status report. Data in, decision out.

pub mod archive;
pub mod backoff;
pub mod drill;
pub mod recover;
pub mod replication;
pub mod restore;
pub mod retention;
pub mod rpo;
pub mod schedule;
pub mod status;
