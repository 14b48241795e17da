//! `api:` in the configuration: the local API's socket, who may use it, and its bounds.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// Where the API listens when the configuration does not say.
pub const DEFAULT_SOCKET: &str = "/run/hostscope/hostscope.sock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    pub enabled: bool,
    pub socket: PathBuf,
    pub allowed_group: Option<String>,
    pub history_records: usize,
    pub history_bytes: usize,
    pub client_buffer: usize,
    pub max_clients: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            enabled: true,
            socket: PathBuf::from(DEFAULT_SOCKET),
            allowed_group: None,
            history_records: 4_096,
            history_bytes: 4 << 20,
            client_buffer: 4_096,
            max_clients: 64,
        }
    }
}

impl ApiSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "The local API (`hostscope events`, `hostscope status`): gRPC on a Unix socket.",
        ),
        ("enabled", "Serve the API."),
        (
            "socket",
            "Socket path; its directory is created 0700 (0750 with allowed_group).",
        ),
        (
            "allowed_group",
            "Group (name or gid) whose members may use the API besides root; null: root only.",
        ),
        (
            "history_records",
            "Latest records kept for `events --last` at most (0: no history).",
        ),
        (
            "history_bytes",
            "Bytes the history's records take in memory at most.",
        ),
        (
            "client_buffer",
            "Records queued per client; a client that falls behind misses records (counted, told to it).",
        ),
        (
            "max_clients",
            "Event streams served at once; more are refused (counted).",
        ),
    ];

    pub fn validate(&self, at: &str, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        if !self.socket.is_absolute() {
            p.push(
                format!("{at}.socket"),
                format_args!("{:?} is not an absolute path", self.socket),
            );
        } else if self
            .socket
            .parent()
            .is_none_or(|d| d == std::path::Path::new("/"))
        {
            p.push(
                format!("{at}.socket"),
                "the socket needs a directory of its own (e.g. /run/hostscope/hostscope.sock)",
            );
        }
        if let Some(g) = &self.allowed_group {
            if let Err(e) = super::server::group_id(g) {
                p.push(format!("{at}.allowed_group"), e);
            }
        }
        if self.history_records > 1_000_000 {
            p.push(
                format!("{at}.history_records"),
                format_args!("{} is more than 1000000", self.history_records),
            );
        }
        if self.history_bytes > 1 << 30 {
            p.push(
                format!("{at}.history_bytes"),
                format_args!("{} is more than 1 GiB", self.history_bytes),
            );
        }
        if !(1..=1_000_000).contains(&self.client_buffer) {
            p.push(
                format!("{at}.client_buffer"),
                format_args!("{} is not between 1 and 1000000", self.client_buffer),
            );
        }
        if !(1..=4096).contains(&self.max_clients) {
            p.push(
                format!("{at}.max_clients"),
                format_args!("{} is not between 1 and 4096", self.max_clients),
            );
        }
    }
}
