//! The syscalls family's part in the sinks (its records are made in `events::syscalls`,
//! its probes loaded by `loader::syscalls`, run by `family::syscalls`).
pub mod sinks;
