//! Root-cause analysis of failures: a storm of refused connects, failed handshakes or
//! syscall errors becomes one incident that says what happened, instead of one record
//! per failure. [`classify`] holds the one table of causes and sentences, [`engine`]
//! folds failures into incidents, [`sink`] runs it on the agent's record stream.

pub mod classify;
pub mod engine;
pub mod record;
pub mod sink;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use record::RcaRecord;

use crate::config::Problems;

/// `rca:` in the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RcaSection {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub update_interval: Duration,
    pub max_open: usize,
}

impl Default for RcaSection {
    fn default() -> Self {
        RcaSection {
            enabled: true,
            window: Duration::from_secs(10),
            update_interval: Duration::from_secs(5),
            max_open: 1024,
        }
    }
}

impl RcaSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "Incidents: failures of one cause from one workload to one target, folded\n\
             into `rca` records that say what happened (docs/rca.md).",
        ),
        ("enabled", "Fold failures into incidents."),
        (
            "window",
            "Quiet period that closes an incident; a longer gap starts a new one.",
        ),
        (
            "update_interval",
            "An open incident is reported again at most this often, when it changed.",
        ),
        (
            "max_open",
            "Incidents open at once at most; failures beyond are counted as overflow.",
        ),
    ];

    pub fn validate(&self, at: &str, p: &mut Problems) {
        let range = Duration::from_millis(100)..=Duration::from_secs(3600);
        for (key, d) in [
            ("window", self.window),
            ("update_interval", self.update_interval),
        ] {
            if !range.contains(&d) {
                p.push(
                    format!("{at}.{key}"),
                    format_args!(
                        "{} is not between 100ms and 1h",
                        humantime::format_duration(d)
                    ),
                );
            }
        }
        if self.max_open == 0 || self.max_open > 1_000_000 {
            p.push(
                format!("{at}.max_open"),
                format_args!("{} is not between 1 and 1000000", self.max_open),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let mut p = Problems::default();
        RcaSection {
            window: Duration::ZERO,
            max_open: 0,
            ..Default::default()
        }
        .validate("rca", &mut p);
        let text = p.to_string();
        assert!(
            text.contains("rca.window: 0s is not between 100ms and 1h"),
            "{text}"
        );
        assert!(text.contains("rca.max_open: 0 is not"), "{text}");
    }
}
