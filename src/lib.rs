//! spoolkeeper: declarative disaster recovery for ZFS-backed IMAP spools.
//!
//! The crate is layered as a functional core (spec, observed model, planner) and an
//! imperative shell (transport, adapters, executor, controller). See
//! `docs/ARCHITECTURE.md` for the module map and the data flow.

pub mod apply;
pub mod arch_restore;
pub mod archive;
pub mod capabilities;
pub mod cli;
pub mod dovecot;
pub mod host;
pub mod jail;
pub mod observe;
pub mod observed;
pub mod plan;
pub mod postfix;
pub mod postfix_cmd;
pub mod replication;
pub mod retention;
pub mod rpo;
pub mod smtp;
pub mod spec;
pub mod status;
pub mod summary;
pub mod zfs;
