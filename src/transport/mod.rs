//! How commands and mail reach hosts: local processes, SSH sessions, batched round trips
//! (`host`) and SMTP sessions (`smtp`). Every remote command has a timeout here.

pub mod batch;
pub mod host;
pub mod imap;

pub use batch::{Batch, BatchOutputs, Slot};
pub mod smtp;
