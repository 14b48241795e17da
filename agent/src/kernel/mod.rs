//! What the running kernel offers: mounts, BTF, tracepoint formats.
pub mod btf;
pub mod mounts;
pub mod tracefs;
