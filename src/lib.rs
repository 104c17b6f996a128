//! spoolkeeper: declarative disaster recovery for ZFS-backed IMAP spools.
//!
//! The crate is layered as a functional core (spec, observed model, planner) and an
//! imperative shell (transport, adapters, executor, controller). See
//! `docs/ARCHITECTURE.md` for the module map and the data flow.

pub mod archive;
pub mod cli;
pub mod dovecot;
pub mod observed;
pub mod postfix_cmd;
pub mod replication;
pub mod retention;
pub mod smtp;
pub mod rpo;
pub mod spec;
pub mod summary;
pub mod zfs;
