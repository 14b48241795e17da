//! hostscope: eBPF host telemetry. The binary (`main.rs`) is a thin CLI over this library,
//! which the integration tests in `tests/` drive directly.
pub mod agent;
pub mod api;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod dump;
pub mod events;
pub mod export;
pub mod family;
pub mod kernel;
pub mod loader;
pub mod metadata;
pub mod output;
pub mod prometheus;
pub mod rca;
pub mod ring;
pub mod sink;
pub mod stats;
pub mod status;
pub mod syscalls;
pub mod tcp;
pub mod tls;

pub use agent::{Agent, AgentConfig};
