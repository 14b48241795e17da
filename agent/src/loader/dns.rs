//! DNS family: the cgroup_skb programs of `probes/src/dns.rs` on the cgroup v2 root (the
//! attachment the TLS wire probe uses), its load-time ports and runtime configuration.

use std::time::Duration;

use aya::{Ebpf, EbpfLoader};
use hostscope_common::{dns::*, RingConfig};

use super::{AttachState, LoadError, LoaderConfig, ProbeStatus};

/// `dns:` in the configuration. `enabled`, `ports` and `ring_bytes` are fixed when the
/// probes load; `timeout` and `max_pending` apply live.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    pub enabled: bool,
    pub ports: Vec<u16>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_pending: usize,
    pub ring_bytes: u32,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            enabled: true,
            ports: vec![DNS_DEFAULT_PORT],
            timeout: Duration::from_secs(5),
            max_pending: 4096,
            ring_bytes: DNS_EVENTS_RING_BYTES,
        }
    }
}

impl DnsSection {
    pub const DOCS: crate::config::Docs = &[
        (
            "",
            "DNS lookups from the wire (UDP and TCP), for every resolver library: latency,\n\
             rcode, addresses, retries, timeouts.",
        ),
        (
            "enabled",
            "Copy DNS messages (client lookups only) from the cgroup_skb hooks.",
        ),
        (
            "ports",
            "Server ports whose traffic is DNS (1 to 4 ports): questions sent to them and\n\
             answers received from them are copied, nothing else.",
        ),
        (
            "timeout",
            "A question with no answer this long after its last attempt is a timeout.",
        ),
        (
            "max_pending",
            "Questions awaiting an answer at once; beyond it questions are evicted and\n\
             counted (pending_evicted).",
        ),
        (
            "ring_bytes",
            "Size of the DNS message ring in bytes (a power of two, at least 4096).",
        ),
    ];

    pub fn validate(&self, at: &str, p: &mut crate::config::Problems) {
        if self.ports.is_empty() || self.ports.len() > DNS_MAX_PORTS {
            p.push(
                format!("{at}.ports"),
                format!("must list 1 to {DNS_MAX_PORTS} ports"),
            );
        }
        if self.ports.contains(&0) {
            p.push(format!("{at}.ports"), "port 0 is not a port");
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.timeout) {
            p.push(format!("{at}.timeout"), "must be between 100ms and 5m");
        }
        if !(1..=1_000_000).contains(&self.max_pending) {
            p.push(format!("{at}.max_pending"), "must be between 1 and 1000000");
        }
        if let Err(e) = super::tcp::check_ring_bytes(self.ring_bytes) {
            p.push(format!("{at}.ring_bytes"), e);
        }
    }
}

/// Sets the ports the programs compare with and the ring's size.
pub fn configure<'a>(section: &'a DnsSection, ports: &'a DnsPorts, loader: &mut EbpfLoader<'a>) {
    loader
        .override_global(DNS_PORTS_GLOBAL, ports, true)
        .map_max_entries(DNS_EVENTS_MAP, section.ring_bytes);
}

/// Attaches both programs (or reports them off); returns whether both are up.
pub fn attach(
    ebpf: &mut Ebpf,
    config: &LoaderConfig,
    report: &mut Vec<ProbeStatus>,
) -> Result<bool, LoadError> {
    let programs = [DNS_EGRESS_PROGRAM, DNS_INGRESS_PROGRAM];
    if !config.dns.enabled {
        for program in programs {
            report.push(ProbeStatus {
                family: "dns",
                program,
                hook: "cgroup_skb".to_string(),
                state: AttachState::Off("DNS off (dns.enabled: false)".to_string()),
            });
        }
        return Ok(false);
    }
    let up = super::attach_cgroup_skb_pair(ebpf, "dns", programs, report) == 2;
    if up {
        super::set_config(
            ebpf,
            DNS_CONFIG_MAP,
            DnsConfig {
                ring: RingConfig {
                    wakeup_bytes: config.wakeup_bytes,
                },
            },
        )?;
    }
    Ok(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_section_is_valid_and_bad_values_are_named() {
        let mut p = crate::config::Problems::default();
        DnsSection::default().validate("dns", &mut p);
        assert!(p.is_empty(), "{p}");
        let bad = DnsSection {
            ports: vec![53, 5353, 1053, 2053, 3053],
            timeout: Duration::from_millis(10),
            max_pending: 0,
            ring_bytes: 5000,
            ..DnsSection::default()
        };
        bad.validate("dns", &mut p);
        let paths: Vec<&str> = p.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dns.ports",
                "dns.timeout",
                "dns.max_pending",
                "dns.ring_bytes"
            ]
        );
    }

    #[test]
    fn unused_port_slots_repeat_the_first_port() {
        assert_eq!(DnsPorts::new(&[53]).ports, [53; 4]);
        assert_eq!(DnsPorts::new(&[53, 5353]).ports, [53, 5353, 53, 53]);
        assert_eq!(DnsPorts::new(&[]), DnsPorts::DEFAULT);
    }
}
