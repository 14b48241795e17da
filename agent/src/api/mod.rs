//! The local API: gRPC on a root-only Unix socket (`proto/hostscope/v1/api.proto`), served
//! by the running agent as one of its sinks, and the client side of `hostscope events` and
//! `hostscope status`. See docs/api.md.
//!
//! - `server`: the socket, its permissions, peer credentials and the gRPC service;
//! - `hub`: one task fans the record stream out to the clients' bounded buffers;
//! - `history`: the latest records, for `--last`;
//! - `filter`: what a client asked for, evaluated before anything is queued for it;
//! - `client`: connecting to the agent with clear errors.

pub mod cli;
pub mod client;
pub mod config;
pub mod filter;
pub mod history;
pub mod hub;
pub mod server;

pub use config::ApiSection;
pub use server::{ApiServer, ApiStats, ServeError};

/// The generated gRPC code of `hostscope.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hostscope.v1");
}

/// The API version this build speaks: the `v1` of the proto package `hostscope.v1`.
pub const API_VERSION: u32 = 1;
/// The proto package, named in version errors.
pub const API_PACKAGE: &str = "hostscope.v1";
