//! What spoolkeeper keeps between runs: the journal of applies on the controller, the
//! cluster lock on the active node, and the replay ledger.

pub mod journal;
pub mod ledger;
pub mod lines;
pub mod lock;
