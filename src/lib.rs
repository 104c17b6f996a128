//! spoolkeeper: declarative disaster recovery for ZFS-backed IMAP spools.
//!
//! The tree is the data flow. The functional core never does I/O and never reads a clock
//! (`tests/layout.rs` holds the rule): `spec` (parse and validate), `model` (observed values),
//! `adapters` (per tool: argv builders and parsers), `decide` (pure decisions, the clock
//! injected), `plan` (the action graph). The imperative shell: `transport` (local, SSH,
//! batches, SMTP), `observe` (hosts → model), `apply` (the executor and the replay), `state`
//! (journal, lock, replay ledger on the controller), `cli` (the only place with a runtime,
//! stdout and exit codes). See `docs/ARCHITECTURE.md` for the module map.

// the functional core
pub mod adapters;
pub mod decide;
pub mod model;
pub mod plan;
pub mod spec;

// the imperative shell
pub mod apply;
pub mod cli;
pub mod controller;
pub mod observe;
pub mod state;
pub mod transport;
