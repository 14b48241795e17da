//! What the running kernel offers: mounts, BTF, tracepoint formats, map fill.
pub mod btf;
pub mod map_fill;
pub mod mounts;
pub mod program_runs;
pub mod tracefs;
