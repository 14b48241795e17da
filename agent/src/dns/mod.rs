//! The DNS family's userspace side: the wire parser and the joiner that makes lookups of
//! the messages (the family's probe and records arrive with issue 14's family interface).

pub mod join;
pub mod parser;
