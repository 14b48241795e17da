//! The TCP family's part in the sinks (its records are decoded in `events::tcp`, its
//! probes loaded by `loader::tcp`, run by `family::tcp`).
pub mod sinks;
