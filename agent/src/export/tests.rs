//! Encoding tests: records in, OTLP messages out, checked field by field.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    common::v1::{any_value::Value as AV, KeyValue},
    metrics::v1::{metric::Data, number_data_point, Metric},
    trace::v1::status::StatusCode,
};

use super::{
    config::Temporality,
    metrics::{MetricsState, Options},
};
use crate::{
    events::{
        syscalls::{Access, SecurityRecord},
        tcp::{Direction, Failure, TcpEventKind, TcpRecord},
        Record,
    },
    metadata::{Identity, Resolver},
};

fn tcp(event: TcpEventKind, errno: u32, port: u16) -> Record {
    Record::Tcp(TcpRecord {
        event,
        timestamp_unix_ns: 2_000_000_000,
        conn_id: 7,
        direction: Direction::Active,
        local: "10.0.0.1:40000".parse().unwrap(),
        remote: format!("10.0.0.2:{port}").parse().unwrap(),
        remote_name: None,
        pid: Some(42),
        tid: Some(42),
        comm: Some("curl".into()),
        cgroup_id: Some(1),
        state: "CLOSE",
        previous_state: "SYN_SENT",
        connect_latency_us: Some(1500.0),
        handshake_rtt_us: None,
        syn_retransmits: 0,
        handshake_end_unseen: false,
        failure: (event == TcpEventKind::ConnectFailed).then(|| Failure::from_errno(errno)),
        duration_us: Some(250.0),
        bytes_acked: Some(1),
        bytes_received: Some(1),
        srtt_us: Some(100),
        retransmits: Some(0),
        resets_sent: 0,
        resets_received: 0,
    })
}

fn opts() -> Options {
    Options {
        temporality: Temporality::Cumulative,
        buckets: Default::default(),
        series_limit: 100,
        pids: false,
        peers: false,
        dns_names: false,
        exponential: false,
    }
}

fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
    metrics.iter().find(|m| m.name == name).unwrap_or_else(|| {
        panic!(
            "{name} not in {:?}",
            metrics.iter().map(|m| &m.name).collect::<Vec<_>>()
        )
    })
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AV> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn int_points(m: &Metric) -> Vec<(Vec<KeyValue>, i64)> {
    match m.data.as_ref().unwrap() {
        Data::Sum(s) => s
            .data_points
            .iter()
            .map(|p| {
                let v = match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i,
                    _ => panic!("int expected"),
                };
                (p.attributes.clone(), v)
            })
            .collect(),
        _ => panic!("{} is not a sum", m.name),
    }
}

fn pid_identity() -> Arc<Identity> {
    Resolver::node_local().identify(crate::metadata::Subject {
        pid: Some(42),
        cgroup_id: None,
    })
}

#[test]
fn refused_connect_counts_by_reason_without_pid_or_peer() {
    let mut m = MetricsState::new(opts(), 0);
    let id = pid_identity();
    m.observe(
        &tcp(TcpEventKind::ConnectFailed, libc::ECONNREFUSED as u32, 9),
        &id,
        1,
    );
    m.observe(
        &tcp(TcpEventKind::ConnectFailed, libc::ECONNREFUSED as u32, 9),
        &id,
        1,
    );
    m.observe(
        &tcp(TcpEventKind::ConnectFailed, libc::ETIMEDOUT as u32, 9),
        &id,
        1,
    );
    let (metrics, _) = m.collect(10);
    let f = find(&metrics, "tcp.connect.failures");
    assert_eq!(f.unit, "{connection}");
    let points = int_points(f);
    assert_eq!(points.len(), 2);
    let refused = points
        .iter()
        .find(|(a, _)| attr(a, "error.type") == Some(&AV::StringValue("refused".into())))
        .unwrap();
    assert_eq!(refused.1, 2);
    assert_eq!(attr(&refused.0, "server.port"), Some(&AV::IntValue(9)));
    assert_eq!(
        attr(&refused.0, "network.type"),
        Some(&AV::StringValue("ipv4".into()))
    );
    assert!(attr(&refused.0, "process.pid").is_none());
    assert!(attr(&refused.0, "network.peer.address").is_none());

    let mut m = MetricsState::new(
        Options {
            pids: true,
            peers: true,
            dns_names: false,
            ..opts()
        },
        0,
    );
    m.observe(
        &tcp(TcpEventKind::ConnectFailed, libc::ECONNREFUSED as u32, 9),
        &id,
        1,
    );
    let (metrics, _) = m.collect(10);
    let points = int_points(find(&metrics, "tcp.connect.failures"));
    assert_eq!(attr(&points[0].0, "process.pid"), Some(&AV::IntValue(42)));
    assert_eq!(
        attr(&points[0].0, "network.peer.address"),
        Some(&AV::StringValue("10.0.0.2".into()))
    );
}

#[test]
fn histogram_uses_configured_bounds_and_seconds() {
    let mut o = opts();
    o.buckets
        .insert("tcp.connect.duration".into(), vec![0.001, 0.002, 0.004]);
    let mut m = MetricsState::new(o, 0);
    let id = Arc::new(Identity::default());
    m.observe(&tcp(TcpEventKind::Connect, 0, 443), &id, 5);
    let (metrics, _) = m.collect(10);
    let h = find(&metrics, "tcp.connect.duration");
    assert_eq!(h.unit, "s");
    let Some(Data::Histogram(h)) = &h.data else {
        panic!("histogram expected")
    };
    let p = &h.data_points[0];
    assert_eq!(p.explicit_bounds, vec![0.001, 0.002, 0.004]);
    // 1.5 ms lands in (0.001, 0.002].
    assert_eq!(p.bucket_counts, vec![0, 1, 0, 0]);
    assert_eq!(p.count, 1);
    assert!((p.sum.unwrap() - 0.0015).abs() < 1e-12);
    assert_eq!(p.start_time_unix_nano, 5);
}

#[test]
fn series_cap_folds_into_overflow_series_and_counts() {
    let mut m = MetricsState::new(
        Options {
            series_limit: 3,
            ..opts()
        },
        0,
    );
    let id = Arc::new(Identity::default());
    for port in 1..=10 {
        m.observe(
            &tcp(TcpEventKind::ConnectFailed, libc::ECONNREFUSED as u32, port),
            &id,
            1,
        );
    }
    m.observe_health(&Default::default(), &Default::default(), 2);
    let (metrics, _) = m.collect(10);
    let points = int_points(find(&metrics, "tcp.connect.failures"));
    assert_eq!(points.len(), 4);
    let overflow = points
        .iter()
        .find(|(a, _)| attr(a, "otel.metric.overflow") == Some(&AV::BoolValue(true)))
        .unwrap();
    assert_eq!(overflow.1, 7);
    let total: i64 = points.iter().map(|p| p.1).sum();
    assert_eq!(total, 10, "nothing lost, only folded");
    let counted = int_points(find(&metrics, "hostscope.metrics.series_overflow"));
    assert_eq!(counted[0].1, 7);
}

#[test]
fn delta_temporality_reports_changes_only() {
    let mut m = MetricsState::new(
        Options {
            temporality: Temporality::Delta,
            ..opts()
        },
        0,
    );
    let id = Arc::new(Identity::default());
    let refused = tcp(TcpEventKind::ConnectFailed, libc::ECONNREFUSED as u32, 9);
    m.observe(&refused, &id, 1);
    m.observe(&refused, &id, 1);
    let (metrics, _) = m.collect(10);
    let f = find(&metrics, "tcp.connect.failures");
    let Some(Data::Sum(s)) = &f.data else {
        panic!()
    };
    assert_eq!(s.aggregation_temporality, 1, "delta");
    assert_eq!(s.data_points[0].start_time_unix_nano, 0);
    assert_eq!(int_points(f)[0].1, 2);
    let (metrics, _) = m.collect(20);
    assert!(metrics.iter().all(|m| m.name != "tcp.connect.failures"));
    m.observe(&refused, &id, 21);
    let (metrics, _) = m.collect(30);
    let f = find(&metrics, "tcp.connect.failures");
    assert_eq!(int_points(f)[0].1, 1);
    let Some(Data::Sum(s)) = &f.data else {
        panic!()
    };
    assert_eq!(s.data_points[0].start_time_unix_nano, 20);
}

#[test]
fn failed_connect_span_and_log() {
    let r = tcp(TcpEventKind::ConnectFailed, libc::ECONNREFUSED as u32, 9);
    let span = super::spans::span(&r).unwrap();
    assert_eq!(span.name, "tcp.connect");
    let status = span.status.unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(status.message.contains("refused"), "{}", status.message);
    assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 250_000);
    assert_eq!(span.trace_id.len(), 16);
    assert_eq!(span.span_id.len(), 8);
    assert_eq!(
        attr(&span.attributes, "error.type"),
        Some(&AV::StringValue("refused".into()))
    );
    // Per-failure logs are an option (`export.failure_logs`); incidents summarise them.
    assert!(super::logs::log(&r, 5, false).is_none());
    let log = super::logs::log(&r, 5, true).unwrap();
    assert_eq!(log.event_name, "hostscope.tcp.connect_failed");
    assert_eq!(log.severity_number, 13);
    assert_eq!(
        attr(&log.attributes, "network.peer.port"),
        Some(&AV::IntValue(9))
    );
    // A successful connect is neither.
    assert!(super::spans::span(&tcp(TcpEventKind::Connect, 0, 9)).is_none());
    assert!(super::logs::log(&tcp(TcpEventKind::Connect, 0, 9), 5, true).is_none());
}

#[test]
fn incident_is_a_log_with_its_cause_target_and_count() {
    use crate::rca::record::{Affected, Ending, IncidentState, RcaRecord};
    let r = Record::Rca(RcaRecord {
        incident_id: 3,
        state: IncidentState::Closed,
        timestamp_unix_ns: 50,
        first_seen_unix_ns: 10,
        last_seen_unix_ns: 40,
        count: 5000,
        cause: "refused",
        family: "tcp",
        sentence: "connect refused — the peer answered with a RST: nothing listens on that port"
            .into(),
        source: "process curl".into(),
        target: "10.0.3.7:443".into(),
        target_address: Some("10.0.3.7:443".parse().unwrap()),
        affected: vec![Affected {
            pid: Some(42),
            comm: Some("curl".into()),
            workload: None,
        }],
        affected_omitted: 0,
        sample_conn_ids: vec![1],
        ended: Some(Ending::Recovered),
        summary: Some("recovered after 5,000 failures over 12 s".into()),
        pid: Some(42),
        cgroup_id: None,
    });
    let log = super::logs::log(&r, 60, false).unwrap();
    assert_eq!(log.event_name, "hostscope.rca.incident");
    assert_eq!(log.time_unix_nano, 50);
    assert_eq!(log.severity_text, "INFO", "a closed incident");
    assert!(matches!(
        log.body.as_ref().and_then(|b| b.value.as_ref()),
        Some(AV::StringValue(s)) if s.contains("nothing listens")
    ));
    for (key, value) in [
        ("error.type", AV::StringValue("refused".into())),
        ("network.peer.address", AV::StringValue("10.0.3.7".into())),
        ("network.peer.port", AV::IntValue(443)),
        ("hostscope.rca.count", AV::IntValue(5000)),
        ("hostscope.rca.state", AV::StringValue("closed".into())),
        ("hostscope.rca.first_seen_unix_ns", AV::IntValue(10)),
        ("hostscope.rca.last_seen_unix_ns", AV::IntValue(40)),
    ] {
        assert_eq!(attr(&log.attributes, key), Some(&value), "{key}");
    }
}

#[test]
fn security_event_is_a_warning_log_with_the_path() {
    let r = Record::Security(SecurityRecord {
        ts_unix_ns: 1,
        access: Access::Open,
        syscall: "openat".into(),
        pid: 5,
        tid: 5,
        ppid: Some(1),
        uid: 0,
        gid: 0,
        comm: "cat".into(),
        cgroup_id: 9,
        path: "/etc/shadow".into(),
        truncated: false,
        flags: 0,
        result: 3,
        errno_name: None,
    });
    let log = super::logs::log(&r, 2, false).unwrap();
    assert_eq!(log.severity_text, "WARN");
    assert_eq!(
        attr(&log.attributes, "file.path"),
        Some(&AV::StringValue("/etc/shadow".into()))
    );
    assert_eq!(attr(&log.attributes, "process.pid"), Some(&AV::IntValue(5)));
    let body = log.body.unwrap().value.unwrap();
    assert_eq!(body, AV::StringValue("cat[5] open /etc/shadow (ok)".into()));
}

#[test]
fn exponential_histograms_on_request() {
    let mut m = MetricsState::new(
        Options {
            exponential: true,
            ..opts()
        },
        0,
    );
    let id = Arc::new(Identity::default());
    // 1.5 ms connect latency, then values spanning six decades force downscaling.
    m.observe(&tcp(TcpEventKind::Connect, 0, 443), &id, 1);
    let (metrics, _) = m.collect(2);
    let Some(Data::ExponentialHistogram(h)) = &find(&metrics, "tcp.connect.duration").data else {
        panic!("exponential histogram expected")
    };
    let p = &h.data_points[0];
    assert_eq!(p.count, 1);
    assert_eq!(p.scale, 20);
    let b = p.positive.as_ref().unwrap();
    let base = 2f64.powf(2f64.powi(-p.scale));
    let lower = base.powi(b.offset);
    assert!(lower < 0.0015 && 0.0015 <= lower * base, "{lower}");

    let mut hist = super::metrics::tests_support::new_exp();
    for v in [1e-6, 1e-3, 1.0] {
        super::metrics::tests_support::record(&mut hist, v);
    }
    let (scale, offset, counts) = super::metrics::tests_support::buckets(&hist);
    assert!(
        counts.len() <= super::metrics::EXP_MAX_BUCKETS,
        "{}",
        counts.len()
    );
    assert_eq!(counts.iter().sum::<u64>(), 3);
    let base = 2f64.powf(2f64.powi(-scale));
    for v in [1e-6f64, 1e-3, 1.0] {
        let i = (v.log2() * 2f64.powi(scale)).ceil() as i32 - 1;
        assert!(i >= offset && ((i - offset) as usize) < counts.len());
        assert!(base.powi(i) < v * 1.000001 && v <= base.powi(i + 1) * 1.000001);
    }
}

#[test]
fn metadata_health_is_exported_kube_errors_included() {
    let mut m = MetricsState::new(opts(), 0);
    let mut stats = crate::metadata::MetadataStats::default();
    stats.kube.errors = 3;
    stats.kube.pods = 7;
    stats.processes.gone = 2;
    m.observe_metadata(&stats, 1);
    let (metrics, _) = m.collect(10);
    let events = find(&metrics, "hostscope.metadata.events");
    let counter = |name: &str| {
        int_points(events)
            .into_iter()
            .find(|(a, _)| {
                attr(a, "hostscope.metadata.counter") == Some(&AV::StringValue(name.into()))
            })
            .map(|(_, v)| v)
    };
    assert_eq!(counter("kube_errors"), Some(3));
    assert_eq!(counter("processes_gone"), Some(2));
    let cached = find(&metrics, "hostscope.metadata.cached");
    let Some(Data::Gauge(g)) = cached.data.as_ref() else {
        panic!("hostscope.metadata.cached is not a gauge");
    };
    let pods = g
        .data_points
        .iter()
        .find(|p| {
            attr(&p.attributes, "hostscope.metadata.cache") == Some(&AV::StringValue("pods".into()))
        })
        .and_then(|p| p.value);
    assert_eq!(pods, Some(number_data_point::Value::AsDouble(7.0)));
}

#[test]
fn reference_table_lists_every_metric() {
    let doc = include_str!("../../../docs/metrics.md");
    for def in super::metrics::all() {
        assert!(
            doc.contains(&format!("| `{}` |", def.name)),
            "docs/metrics.md has no row for {}",
            def.name
        );
    }
}

#[test]
fn reconfigure_keeps_counters_and_restarts_only_rebucketed_histograms() {
    let mut m = MetricsState::new(opts(), 0);
    let id = pid_identity();
    let refused = tcp(TcpEventKind::ConnectFailed, libc::ECONNREFUSED as u32, 9);
    m.observe(&refused, &id, 1);
    m.observe(&tcp(TcpEventKind::Connect, 0, 443), &id, 1);
    m.observe(&tcp(TcpEventKind::Connect, 0, 443), &id, 1);
    let _ = m.collect(2);
    let mut o = opts();
    o.buckets
        .insert("tcp.connect.duration".into(), vec![0.001, 0.002, 0.004]);
    m.reconfigure(o, 3);
    m.observe(&refused, &id, 4);
    m.observe(&tcp(TcpEventKind::Connect, 0, 443), &id, 4);
    let (metrics, _) = m.collect(5);
    // The counter kept its total and its start.
    let failures = int_points(find(&metrics, "tcp.connect.failures"));
    assert_eq!(failures.iter().map(|(_, v)| v).sum::<i64>(), 2);
    // The histogram with new bounds restarted at the reconfiguration, with those bounds.
    let Some(Data::Histogram(h)) = find(&metrics, "tcp.connect.duration").data.as_ref() else {
        panic!("histogram expected");
    };
    let p = &h.data_points[0];
    assert_eq!(p.count, 1);
    assert_eq!(p.start_time_unix_nano, 3);
    assert_eq!(p.explicit_bounds, vec![0.001, 0.002, 0.004]);
    assert_eq!(p.bucket_counts.len(), 4);
}

fn lookup(rcode: Option<u16>, name: &str, retries: u32) -> Record {
    use crate::events::dns::*;
    Record::Dns(DnsRecord {
        query_type: qtype_name(28),
        retries,
        ..sample(rcode, name)
    })
}

#[test]
fn lookups_are_timed_by_rcode_and_failures_counted_without_names() {
    let id = pid_identity();
    for dns_names in [false, true] {
        let mut m = MetricsState::new(
            Options {
                dns_names,
                ..opts()
            },
            0,
        );
        m.observe(&lookup(Some(0), "a.test", 0), &id, 1);
        m.observe(&lookup(Some(3), "b.test", 0), &id, 1);
        m.observe(&lookup(Some(3), "c.test", 0), &id, 1);
        m.observe(&lookup(None, "d.test", 2), &id, 1);
        let (metrics, _) = m.collect(10);
        let failures = int_points(find(&metrics, "dns.lookup.failures"));
        let count = |kind: &str| -> i64 {
            failures
                .iter()
                .filter(|(a, _)| attr(a, "error.type") == Some(&AV::StringValue(kind.into())))
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!((count("NXDOMAIN"), count("TIMEOUT")), (2, 1));
        assert_eq!(
            failures
                .iter()
                .any(|(a, _)| attr(a, "dns.question.name").is_some()),
            dns_names,
            "names only when asked"
        );
        let (a, _) = &failures[0];
        assert_eq!(
            attr(a, "hostscope.dns.question.type"),
            Some(&AV::StringValue("AAAA".into()))
        );
        assert_eq!(
            attr(a, "server.address"),
            Some(&AV::StringValue("10.96.0.10".into()))
        );
        let retries = int_points(find(&metrics, "dns.lookup.retries"));
        assert_eq!(retries.iter().map(|(_, n)| n).sum::<i64>(), 2);
        let Some(Data::Histogram(h)) = find(&metrics, "dns.lookup.duration").data.as_ref() else {
            panic!("dns.lookup.duration is not a histogram");
        };
        let codes: Vec<_> = h
            .data_points
            .iter()
            .map(|p| {
                (
                    attr(&p.attributes, "hostscope.dns.response_code").cloned(),
                    p.count,
                )
            })
            .collect();
        // A timeout has no latency: only answers are timed.
        assert_eq!(
            h.data_points.iter().map(|p| p.count).sum::<u64>(),
            3,
            "{codes:?}"
        );
        assert!(
            codes.contains(&(Some(AV::StringValue("NOERROR".into())), 1)),
            "{codes:?}"
        );
    }
}
