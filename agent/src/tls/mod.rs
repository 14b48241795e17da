//! TLS handshakes in userspace: the wire parser, the failure reasons, and the tracker
//! that joins wire, OpenSSL and TCP into one record per handshake.
pub mod parser;
pub mod reason;
pub mod sinks;
pub mod task;
pub mod tracker;
