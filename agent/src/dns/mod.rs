//! The DNS family's userspace side: the wire parser, TCP stream reassembly, the
//! question/answer joiner and the task that runs them on the probe's messages.

pub mod join;
pub mod parser;
pub mod streams;
pub mod task;
