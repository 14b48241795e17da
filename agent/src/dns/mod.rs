//! The DNS family's userspace side: the wire parser, the joiner that makes lookups of the
//! messages, and the names of resolved addresses that later connections carry.

pub mod join;
pub mod names;
pub mod parser;
