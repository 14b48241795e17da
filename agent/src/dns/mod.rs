//! The DNS family's userspace side: the wire parser (the family's probe, joining and
//! records arrive with issue 14's family interface).

pub mod names;
pub mod parser;
