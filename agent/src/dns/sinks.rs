//! What the sinks make of DNS lookups: metrics, failure logs, RCA causes and
//! recoveries, the API filter's failures.

use opentelemetry_proto::tonic::logs::v1::SeverityNumber;

use crate::{
    api::filter::Filtered,
    events::{
        dns::{DnsOutcome, DnsRecord, Transport},
        view::{list_bytes, opt_bytes, About},
        RecordView,
    },
    export::{
        logs::{LogEntry, Logged},
        metrics::{int, text, Key, Measure, Meter, MetricDef},
        resource::{int_value, kv, str_value},
        spans::Traced,
    },
    metadata::Subject,
    rca::classify::{Cause, Classified, Classify, KnownCertificate, Recovery, Success, Target},
};

pub static LOOKUP_DURATION: MetricDef = MetricDef::histogram(
    "dns.lookup.duration",
    "s",
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
    "DNS lookups, question sent to answer, by response code and question type (first attempt to answer, retries included).",
);
pub static LOOKUP_FAILURES: MetricDef = MetricDef::counter(
    "dns.lookup.failures",
    "{lookup}",
    "Lookups answered with an rcode other than NOERROR, or not answered (error.type: NXDOMAIN, SERVFAIL, TIMEOUT, ...).",
);
pub static LOOKUP_RETRIES: MetricDef = MetricDef::counter(
    "dns.lookup.retries",
    "{query}",
    "Questions sent again because no answer came (lost UDP packets, slow servers).",
);

/// The family's metrics (`family::Descriptor::metrics`).
pub static METRICS: &[&MetricDef] = &[&LOOKUP_DURATION, &LOOKUP_FAILURES, &LOOKUP_RETRIES];

/// A lookup answered with NOERROR (by the server, or for the name, the incident is
/// against).
pub const ANSWER: Recovery = Recovery("dns_answer");

pub static NXDOMAIN: Cause = Cause::new("dns_nxdomain", "dns", ANSWER);
pub static SERVFAIL: Cause = Cause::new("dns_servfail", "dns", ANSWER);
pub static REFUSED: Cause = Cause::new("dns_refused", "dns", ANSWER);
pub static TIMEOUT: Cause = Cause::new("dns_timeout", "dns", ANSWER);
pub static ERROR: Cause = Cause::new("dns_error", "dns", ANSWER);

/// The family's causes, in the order docs/rca.md lists them.
pub static CAUSES: &[&Cause] = &[&NXDOMAIN, &SERVFAIL, &REFUSED, &TIMEOUT, &ERROR];

fn transport(r: &DnsRecord) -> &'static str {
    match r.transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

impl RecordView for DnsRecord {
    fn about(&self) -> About {
        About {
            kind: "dns",
            time_unix_ns: self.timestamp_unix_ns,
            subject: Subject {
                pid: self.pid,
                cgroup_id: self.cgroup_id,
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        opt_bytes(&self.comm)
            + self.query_name.capacity()
            + self.query_type.capacity()
            + opt_bytes(&self.rcode)
            + list_bytes(&self.addresses, |_| 0)
            + self.search.as_ref().map_or(0, |x| x.base.capacity())
    }

    fn peer(&self) -> Option<std::net::SocketAddr> {
        Some(self.server)
    }
}

impl Measure for DnsRecord {
    /// Query names are unbounded (every pod's search-list expansions): on data points
    /// only when asked (`export.metric_dns_names`).
    fn measure(&self, meter: &mut Meter<'_>) {
        let r = self;
        let mut key: Key = vec![
            text("network.transport", transport(r)),
            text("server.address", r.server.ip().to_string()),
            int("server.port", r.server.port() as i64),
            text("hostscope.dns.question.type", r.query_type.as_str()),
        ];
        if meter.options().dns_names {
            key.push(text("dns.question.name", r.query_name.as_str()));
        }
        meter.identity_key(&mut key);
        if r.retries > 0 {
            meter.add(&LOOKUP_RETRIES, key.clone(), r.retries as i64);
        }
        if let Some(kind) = r.failure_kind() {
            let mut k = key.clone();
            k.push(text("error.type", kind));
            meter.add(&LOOKUP_FAILURES, k, 1);
        }
        if let (Some(us), Some(rcode)) = (r.latency_us, &r.rcode) {
            key.push(text("hostscope.dns.response_code", rcode.as_str()));
            meter.record(&LOOKUP_DURATION, key, us / 1e6);
        }
    }
}

impl Logged for DnsRecord {
    /// A failed or unanswered lookup (`hostscope.dns.lookup_failed`).
    fn log_entry(&self) -> Option<LogEntry> {
        let r = self;
        if !r.is_failure() {
            return None;
        }
        let kind = r.failure_kind().unwrap_or("UNKNOWN");
        let transport = transport(r);
        let mut a = vec![
            kv("error.type", str_value(kind)),
            kv("dns.question.name", str_value(&r.query_name)),
            kv("hostscope.dns.question.type", str_value(&r.query_type)),
            kv("server.address", str_value(r.server.ip().to_string())),
            kv("server.port", int_value(r.server.port() as i64)),
            kv("network.transport", str_value(transport)),
            kv("hostscope.dns.retries", int_value(r.retries as i64)),
        ];
        if let Some(pid) = r.pid {
            a.push(kv("process.pid", int_value(pid as i64)));
        }
        if let Some(comm) = &r.comm {
            a.push(kv("process.executable.name", str_value(comm)));
        }
        if let Some(us) = r.latency_us {
            a.push(kv("hostscope.duration_us", int_value(us as i64)));
        }
        if let Some(s) = &r.search {
            a.push(kv("hostscope.dns.search.base", str_value(&s.base)));
        }
        let body = match r.outcome {
            DnsOutcome::Timeout => format!(
                "lookup of {} {} not answered by {} ({} retries)",
                r.query_type, r.query_name, r.server, r.retries
            ),
            DnsOutcome::Answered => format!(
                "lookup of {} {} failed: {kind} from {}",
                r.query_type, r.query_name, r.server
            ),
        };
        Some(LogEntry {
            time_unix_ns: r.timestamp_unix_ns,
            severity: SeverityNumber::Warn,
            event: "hostscope.dns.lookup_failed",
            body,
            attributes: a,
        })
    }

    fn failure_log(&self) -> bool {
        self.is_failure()
    }
}

impl Traced for DnsRecord {}

impl Classify for DnsRecord {
    fn classify(&self, _cert: Option<&KnownCertificate>) -> Option<Classified> {
        classify_failure(self)
    }

    /// A NOERROR answer recovers incidents against its server and against its name (and
    /// the name its search list expanded).
    fn successes(&self, out: &mut Vec<Success>) {
        let r = self;
        if r.outcome != DnsOutcome::Answered || r.rcode.as_deref() != Some("NOERROR") {
            return;
        }
        let mut push = |target| {
            out.push(Success {
                recovery: ANSWER,
                target,
                comm: r.comm.clone(),
                seen_unix_ns: r.timestamp_unix_ns,
            })
        };
        push(Target::Address(r.server));
        push(Target::Name(r.query_name.clone()));
        if let Some(s) = &r.search {
            push(Target::Name(s.base.clone()));
        }
    }
}

/// A failed lookup. NXDOMAIN is against the name (the server answered: the name is
/// wrong); the others are against the server. NXDOMAINs of a search-list walk's
/// expansions are the resolver's routine, not failures: only the name as asked (the
/// walk's base) is, once every expansion failed too.
fn classify_failure(r: &DnsRecord) -> Option<Classified> {
    let kind = r.failure_kind()?;
    let name = &r.query_name;
    let server = r.server;
    let (cause, sentence, target) = match kind {
        "NXDOMAIN" => {
            let sentence = match &r.search {
                Some(s) if s.base != *name => return None,
                Some(s) => format!(
                    "lookup of {name} failed — NXDOMAIN for the name and its {} search-list expansions: no such name (a wrong service or namespace name?)",
                    s.nxdomain_before
                ),
                None => format!(
                    "lookup of {name} failed — NXDOMAIN: no such name (a wrong service or namespace name?)"
                ),
            };
            (&NXDOMAIN, sentence, Target::Name(name.clone()))
        }
        "SERVFAIL" => (
            &SERVFAIL,
            format!(
                "lookup of {name} failed — SERVFAIL from {server}: the server could not get an answer (its upstream is failing, or the zone is broken)"
            ),
            Target::Address(server),
        ),
        "REFUSED" => (
            &REFUSED,
            format!(
                "lookup of {name} failed — REFUSED by {server}: the server will not answer this client (an ACL, or not a recursive resolver)"
            ),
            Target::Address(server),
        ),
        "TIMEOUT" => (
            &TIMEOUT,
            format!(
                "DNS server {server} not answering — no answer to {} {name} after {} retries: the server is overloaded or its packets are dropped",
                r.query_type, r.retries
            ),
            Target::Address(server),
        ),
        rcode => (
            &ERROR,
            format!("lookup of {name} failed — {rcode} from {server}"),
            Target::Address(server),
        ),
    };
    Some(Classified {
        cause,
        sentence,
        target,
        weight: 1,
        conn_id: None,
        comm: r.comm.clone(),
        seen_unix_ns: r.timestamp_unix_ns,
        over_ns: 0,
    })
}

impl Filtered for DnsRecord {
    fn is_failure(&self) -> bool {
        DnsRecord::is_failure(self)
    }

    /// The response code, and `timeout` for an unanswered lookup.
    fn reasons(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.rcode.as_deref().into_iter().collect();
        if self.outcome == DnsOutcome::Timeout {
            out.push("timeout");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::Record,
        rca::classify::{classify, successes},
    };

    fn lookup(rcode: Option<u16>) -> DnsRecord {
        crate::events::dns::sample(rcode, "payments.shop.svc.cluster.local")
    }

    #[test]
    fn dns_failures_name_the_name_or_the_server() {
        let c = classify(&Record::Dns(lookup(Some(3))), None).unwrap();
        assert_eq!(c.cause.code, "dns_nxdomain");
        assert_eq!(
            c.target,
            Target::Name("payments.shop.svc.cluster.local".into())
        );
        assert!(
            c.sentence.contains("NXDOMAIN: no such name"),
            "{}",
            c.sentence
        );
        let c = classify(&Record::Dns(lookup(Some(2))), None).unwrap();
        assert_eq!(c.cause.code, "dns_servfail");
        assert_eq!(c.target, Target::Address("10.96.0.10:53".parse().unwrap()));
        let c = classify(&Record::Dns(lookup(None)), None).unwrap();
        assert_eq!(c.cause.code, "dns_timeout");
        assert!(
            c.sentence
                .starts_with("DNS server 10.96.0.10:53 not answering")
                && c.sentence.contains("after 2 retries"),
            "{}",
            c.sentence
        );
        assert_eq!(
            classify(&Record::Dns(lookup(Some(5))), None)
                .unwrap()
                .cause
                .code,
            "dns_refused"
        );
        assert_eq!(
            classify(&Record::Dns(lookup(Some(4))), None)
                .unwrap()
                .cause
                .code,
            "dns_error"
        );
        assert!(classify(&Record::Dns(lookup(Some(0))), None).is_none());
        // A search-list expansion's NXDOMAIN is routine; the name as asked failing is not.
        let mut expansion = lookup(Some(3));
        expansion.search = Some(crate::events::dns::SearchExpansion {
            base: "payments".into(),
            nxdomain_before: 1,
        });
        assert!(classify(&Record::Dns(expansion.clone()), None).is_none());
        expansion.query_name = "payments".into();
        expansion.search.as_mut().unwrap().nxdomain_before = 4;
        let c = classify(&Record::Dns(expansion), None).unwrap();
        assert!(
            c.sentence.contains("its 4 search-list expansions"),
            "{}",
            c.sentence
        );
    }

    #[test]
    fn a_noerror_answer_recovers_its_server_and_its_names() {
        let mut ok = lookup(Some(0));
        ok.search = Some(crate::events::dns::SearchExpansion {
            base: "payments".into(),
            nxdomain_before: 2,
        });
        let mut out = Vec::new();
        successes(&Record::Dns(ok), &mut out);
        let targets: Vec<_> = out.iter().map(|s| s.target.clone()).collect();
        assert_eq!(
            targets,
            [
                Target::Address("10.96.0.10:53".parse().unwrap()),
                Target::Name("payments.shop.svc.cluster.local".into()),
                Target::Name("payments".into())
            ]
        );
        assert!(out.iter().all(|s| s.recovery == ANSWER));
        out.clear();
        successes(&Record::Dns(lookup(Some(3))), &mut out);
        assert!(out.is_empty(), "an NXDOMAIN recovers nothing");
    }
}
