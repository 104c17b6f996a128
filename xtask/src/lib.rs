//! Developer tasks of the spoolkeeper workspace, as a library so that every task (lab, ci, demo,
//! bench) can call the others' functions.

pub mod lab;
pub mod rusage;
