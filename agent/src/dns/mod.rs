//! The DNS family's userspace side: the wire parser, TCP stream reassembly, the joiner
//! that makes lookups of the messages, the task that runs them on the probe's messages,
//! and the names of resolved addresses that later connections carry.

pub mod join;
pub mod names;
pub mod parser;
pub mod sinks;
pub mod streams;
pub mod task;
