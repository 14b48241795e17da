//! One configuration tree for the agent. Each section is defined next to the code it
//! configures (and holds that code's defaults, once); this module assembles them, reads a
//! YAML file into them with errors that name the key path and line, validates the whole
//! tree, renders the commented defaults, and tells which changed keys apply live.
//!
//! Sources, lowest precedence first: built-in defaults, the file, the environment
//! (`OTEL_*`, resolved by the export section), command-line flags (laid over the tree by
//! the binary).

mod diff;
mod file;
mod render;

use serde::{Deserialize, Serialize};

pub use diff::{changed_keys, Plan};
pub use file::{check_file_ownership, load_file, parse_str, FileError};
pub use render::default_yaml;

use crate::{
    agent::AgentSection, api::ApiSection, export::config::ExportSection, family,
    loader::syscalls::SyscallsSection, loader::tcp::TcpSection, loader::tls::TlsSection,
    metadata::MetadataOptions, prometheus::PrometheusSection,
};

/// The whole configuration. A later sink adds its section here; a later probe family adds
/// its field here (serde needs it) and its help and checks in its `family::Descriptor`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub agent: AgentSection,
    pub tcp: TcpSection,
    pub tls: TlsSection,
    pub syscalls: SyscallsSection,
    pub dns: crate::loader::dns::DnsSection,
    pub metadata: MetadataOptions,
    pub export: ExportSection,
    pub api: ApiSection,
    pub prometheus: PrometheusSection,
    pub rca: crate::rca::RcaSection,
}

/// Help for every key of a section, as `(key path within the section, text)`; rendered as
/// comments by `hostscope config default` and required for every leaf by a test.
pub type Docs = &'static [(&'static str, &'static str)];

/// The sections' docs with their section names: the agent's, each probe family's (from
/// its [`crate::family::Descriptor`]), then the sinks'.
pub fn docs() -> Vec<(&'static str, Docs)> {
    let mut docs = vec![("agent", AgentSection::DOCS)];
    docs.extend(family::REGISTERED.iter().map(|f| (f.name, f.docs)));
    docs.extend([
        ("metadata", crate::metadata::METADATA_DOCS),
        ("export", ExportSection::DOCS),
        ("api", ApiSection::DOCS),
        ("prometheus", PrometheusSection::DOCS),
        ("rca", crate::rca::RcaSection::DOCS),
    ]);
    docs
}

/// One problem in a configuration, at a key path such as `syscalls.watch_paths[2]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    /// Line in the file, when known.
    pub line: Option<usize>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a tree (validation never stops at the first one).
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl std::fmt::Display) {
        self.0.push(Problem {
            path: path.into(),
            message: message.to_string(),
            line: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was found.
    pub fn into_result(self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl Config {
    /// Checks the whole tree; every problem is named by its key path.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut p = Problems::default();
        self.agent.validate("agent", &mut p);
        for f in family::REGISTERED {
            (f.validate)(self, &mut p);
        }
        crate::metadata::validate_options(&self.metadata, "metadata", &mut p);
        self.export.validate("export", &mut p);
        self.api.validate("api", &mut p);
        self.prometheus.validate("prometheus", &mut p);
        self.rca.validate("rca", &mut p);
        p.into_result()
    }

    /// The running agent's configuration from a valid tree.
    pub fn agent_config(&self) -> Result<crate::AgentConfig, Problems> {
        self.validate()?;
        let mut p = Problems::default();
        let syscalls = match self.syscalls.options() {
            Ok(o) => o,
            Err(e) => {
                p.push("syscalls", e);
                return Err(p);
            }
        };
        Ok(crate::AgentConfig {
            loader: crate::loader::LoaderConfig {
                pin_dir: self.agent.pin.then(|| self.agent.pin_dir.clone()),
                tcp_ring_bytes: self.tcp.ring_bytes,
                tcp_max_conns: self.tcp.max_connections,
                wakeup_bytes: self.agent.wakeup_bytes,
                tls_uprobe_io: self.tls.uprobe_io,
                syscalls,
                dns: self.dns.clone(),
            },
            poll_interval: self.agent.poll_interval,
            library_rescan_interval: self.tls.library_rescan_interval,
            channel_capacity: self.agent.channel_capacity,
            metadata: self.metadata.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        Config::default().agent_config().unwrap();
    }

    #[test]
    fn agent_config_default_is_the_tree_default() {
        let a = Config::default().agent_config().unwrap();
        let b = crate::AgentConfig::default();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
