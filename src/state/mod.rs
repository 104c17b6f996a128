//! What spoolkeeper keeps between runs: the journal of applies on the controller, the
//! cluster lock on every reachable host, and the replay ledger.

pub mod journal;
pub mod ledger;
pub mod lines;
pub mod lock;
