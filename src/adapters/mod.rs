//! One module per tool: the argv spoolkeeper sends to it and the parser of what it prints.
//! Pure: no I/O, no clock. Every remote command is built here, nowhere else.

pub mod capabilities;
pub mod dispatch;
pub mod dovecot;
pub mod fencing;
pub mod files;
pub mod jail;
pub mod lock;
pub mod mail;
pub mod notify;
pub mod postfix;
pub mod postfix_cmd;
pub mod shell;
pub mod zfs;
