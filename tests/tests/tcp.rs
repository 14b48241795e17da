//! TCP family against the real kernel: real sockets on loopback and across a veth pair
//! into a network namespace, faults injected with nftables.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use hostscope::events::tcp::{Direction, FailureReason, TcpEventKind, TcpRecord};
use hostscope_tests::*;

const WAIT: Duration = Duration::from_secs(5);

fn is(
    kind: TcpEventKind,
    dir: Direction,
    local: SocketAddr,
    remote: SocketAddr,
) -> impl Fn(&TcpRecord) -> bool {
    move |r| r.event == kind && r.direction == dir && r.local == local && r.remote == remote
}

/// A full exchange: connect, 1000 bytes up, 500 down, orderly close; checks both sides.
fn exchange(ip: IpAddr) {
    let h = Harness::start();
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let server = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(server).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    let client_addr = client.local_addr().unwrap();

    client.write_all(&[1u8; 1000]).unwrap();
    let mut buf = [0u8; 1000];
    accepted.read_exact(&mut buf).unwrap();
    accepted.write_all(&[2u8; 500]).unwrap();
    client.read_exact(&mut buf[..500]).unwrap();
    let client_info = tcp_info(&client);
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(accepted.read(&mut buf).unwrap(), 0);
    drop(accepted);
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    drop(client);

    let me = std::process::id();
    let connect = h.wait_tcp(
        1,
        WAIT,
        is(
            TcpEventKind::Connect,
            Direction::Active,
            client_addr,
            server,
        ),
    )[0]
    .clone();
    assert_eq!(connect.pid, Some(me));
    assert!(connect.comm.as_deref().is_some_and(|c| !c.is_empty()));
    assert!(connect.cgroup_id.is_some_and(|c| c != 0));
    let latency = connect.connect_latency_us.expect("active connect latency");
    assert!(
        latency > 0.0 && latency < 1_000_000.0,
        "latency {latency} µs"
    );
    assert_eq!(connect.syn_retransmits, 0);

    let accepted_rec = h.wait_tcp(
        1,
        WAIT,
        is(
            TcpEventKind::Connect,
            Direction::Passive,
            server,
            client_addr,
        ),
    )[0]
    .clone();
    assert_ne!(accepted_rec.conn_id, connect.conn_id);
    assert!(
        accepted_rec.handshake_rtt_us.is_some(),
        "passive handshake RTT"
    );

    let close = h.wait_tcp(
        1,
        WAIT,
        is(TcpEventKind::Close, Direction::Active, client_addr, server),
    )[0]
    .clone();
    assert_eq!(
        close.conn_id, connect.conn_id,
        "one id for the whole connection"
    );
    assert_eq!(close.pid, Some(me));
    // tcp_info counts SYN and FIN in the sequence space; so do the records.
    let acked = close.bytes_acked.unwrap();
    assert!((1001..=1002).contains(&acked), "client acked {acked}");
    let received = close.bytes_received.unwrap();
    assert!(
        (500..=501).contains(&received),
        "client received {received}"
    );
    assert!(
        acked >= client_info.tcpi_bytes_acked,
        "record {acked} < tcp_info {}",
        client_info.tcpi_bytes_acked
    );
    assert_eq!(close.retransmits, Some(0));
    assert!(close.srtt_us.is_some_and(|s| s > 0 && s < 1_000_000));
    assert!(close.duration_us.is_some_and(|d| d >= latency));
    assert!(
        close.failure.is_none(),
        "orderly close: {:?}",
        close.failure
    );

    let server_close = h.wait_tcp(
        1,
        WAIT,
        is(TcpEventKind::Close, Direction::Passive, server, client_addr),
    )[0]
    .clone();
    assert_eq!(server_close.conn_id, accepted_rec.conn_id);
    // The owner of an accepted socket is learned when it closes it.
    assert_eq!(server_close.pid, Some(me));
    assert!((1000..=1001).contains(&server_close.bytes_received.unwrap()));
    assert!((501..=502).contains(&server_close.bytes_acked.unwrap()));
}

#[test]
fn ipv4_connect_latency_and_close_totals() {
    if !privileged("ipv4_connect_latency_and_close_totals") {
        return;
    }
    exchange(IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn ipv6_connect_latency_and_close_totals() {
    if !privileged("ipv6_connect_latency_and_close_totals") {
        return;
    }
    exchange(IpAddr::V6(Ipv6Addr::LOCALHOST));
}

fn refused(ip: IpAddr) {
    let h = Harness::start();
    let target = closed_port(ip);
    let err = TcpStream::connect(target).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let r = h.wait_tcp(1, WAIT, |r| {
        r.event == TcpEventKind::ConnectFailed && r.remote == target
    })[0]
        .clone();
    let failure = r.failure.clone().expect("failure reason");
    assert_eq!(failure.reason, FailureReason::Refused);
    assert_eq!(failure.errno, libc::ECONNREFUSED as u32);
    assert_eq!(r.pid, Some(std::process::id()));
    assert_eq!(r.syn_retransmits, 0);
    assert!(
        r.to_string()
            .contains(&format!("-> {target} refused (ECONNREFUSED)")),
        "{r}"
    );
    assert!(r.connect_latency_us.is_none());
}

#[test]
fn ipv4_refused_connect() {
    if !privileged("ipv4_refused_connect") {
        return;
    }
    refused(IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn ipv6_refused_connect() {
    if !privileged("ipv6_refused_connect") {
        return;
    }
    refused(IpAddr::V6(Ipv6Addr::LOCALHOST));
}

#[test]
fn syns_dropped_by_firewall_time_out_with_retransmit_count() {
    if !privileged("syns_dropped_by_firewall_time_out_with_retransmit_count") {
        return;
    }
    let ns = NetNs::new("syn", 1);
    let _listener = ns.listen(8443);
    ns.drop_input("tcp dport 8443 tcp flags syn counter drop");
    let h = Harness::start();
    let target = SocketAddr::new(ns.ns_ip, 8443);
    // TCP_SYNCNT=2 bounds the wait to what two exponential backoffs take (1+2+4 s);
    // kernels with tcp_syn_linear_timeouts retransmit every second within it.
    let (_fd, res) = connect_with_syncnt(target, 2);
    let err = res.expect_err("SYNs are dropped");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT));
    // The firewall saw the first SYN and every retransmit.
    let retransmitted = ns.counted_packets() as u32 - 1;
    let r = h.wait_tcp(1, WAIT, |r| {
        r.event == TcpEventKind::ConnectFailed && r.remote == target
    })[0]
        .clone();
    assert_eq!(r.failure.as_ref().unwrap().reason, FailureReason::TimedOut);
    assert!(
        retransmitted >= 2,
        "{retransmitted} SYN retransmits reached the firewall"
    );
    assert_eq!(
        r.syn_retransmits, retransmitted,
        "probe count vs firewall count"
    );
    assert_eq!(
        r.retransmits,
        Some(retransmitted),
        "kernel total_retrans at close"
    );
    let waited = r.duration_us.unwrap() / 1e6;
    assert!((5.0..12.0).contains(&waited), "gave up after {waited} s");
}

#[test]
fn slow_handshake_reports_syn_retransmits_before_success() {
    if !privileged("slow_handshake_reports_syn_retransmits_before_success") {
        return;
    }
    let ns = NetNs::new("synok", 2);
    let listener = ns.listen(8444);
    // Every other SYN to the port is dropped: the first, and its retransmit passes.
    ns.drop_input("tcp dport 8444 tcp flags syn numgen inc mod 2 == 0 drop");
    let h = Harness::start();
    let target = SocketAddr::new(ns.ns_ip, 8444);
    let (_fd, res) = connect_with_syncnt(target, 3);
    res.expect("the retransmitted SYN gets through");
    let (_s, _) = listener.accept().unwrap();
    let r = h.wait_tcp(1, WAIT, |r| {
        r.event == TcpEventKind::Connect && r.direction == Direction::Active && r.remote == target
    })[0]
        .clone();
    assert_eq!(r.syn_retransmits, 1);
    let latency_s = r.connect_latency_us.unwrap() / 1e6;
    assert!(
        (0.9..3.0).contains(&latency_s),
        "latency {latency_s} s covers one RTO"
    );
}

#[test]
fn dropped_data_segments_show_as_retransmits() {
    if !privileged("dropped_data_segments_show_as_retransmits") {
        return;
    }
    let ns = NetNs::new("retx", 3);
    let listener = ns.listen(8445);
    // Drop every tenth data packet arriving at the server (not SYNs, not pure ACKs).
    // veth passes GSO packets of up to 64 KiB, hence a payload of many of them.
    ns.drop_input("tcp dport 8445 meta length > 200 numgen inc mod 10 == 0 counter drop");
    let h = Harness::start();
    let target = SocketAddr::new(ns.ns_ip, 8445);
    let mut client = TcpStream::connect(target).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let reader = std::thread::spawn(move || {
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match server.read(&mut buf) {
                Ok(0) => break total,
                Ok(n) => total += n,
                Err(e) => panic!("server read: {e}"),
            }
        }
    });
    let payload = vec![7u8; 8 * 1024 * 1024];
    client.write_all(&payload).unwrap();
    // Wait until everything is acknowledged so no retransmit happens after we look.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info = tcp_info(&client);
        if info.tcpi_unacked == 0 || std::time::Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(info.tcpi_unacked, 0, "data never fully acknowledged");
    let local = client.local_addr().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(reader.join().unwrap(), payload.len());
    drop(client);

    let r = h.wait_tcp(
        1,
        WAIT,
        is(TcpEventKind::Close, Direction::Active, local, target),
    )[0]
    .clone();
    let retrans = r.retransmits.unwrap();
    assert!(retrans > 0, "a quarter of the segments were dropped");
    assert!(
        retrans >= info.tcpi_total_retrans && retrans <= info.tcpi_total_retrans + 2,
        "record {retrans} vs tcp_info {} (a FIN may add one)",
        info.tcpi_total_retrans
    );
    assert!(r.bytes_acked.unwrap() > payload.len() as u64);
}

/// A connected loopback pair: (client, the server's accepted side).
fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    (client, accepted)
}

#[test]
fn reset_mid_connection_is_seen_by_both_sides() {
    if !privileged("reset_mid_connection_is_seen_by_both_sides") {
        return;
    }
    let h = Harness::start();
    let (mut client, accepted) = loopback_pair();
    let server = accepted.local_addr().unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(b"hello").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Abortive close of the server side: a RST instead of a FIN.
    set_linger_zero(&accepted);
    drop(accepted);
    let mut buf = [0u8; 16];
    let err = client.read(&mut buf).expect_err("connection was reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

    let sent = h.wait_tcp(1, WAIT, |r| {
        r.event == TcpEventKind::ResetSent && r.local == server && r.remote == client_addr
    })[0]
        .clone();
    assert_eq!(sent.direction, Direction::Passive);
    assert_eq!(sent.resets_sent, 1);
    // An abortive close enters CLOSE before the reset goes out.
    assert_eq!(sent.state, "CLOSE");
    let received = h.wait_tcp(
        1,
        WAIT,
        is(
            TcpEventKind::ResetReceived,
            Direction::Active,
            client_addr,
            server,
        ),
    )[0]
    .clone();
    assert_eq!(received.resets_received, 1);
    assert_eq!(received.pid, Some(std::process::id()));
    assert_eq!(received.state, "ESTABLISHED");
    let close = h.wait_tcp(
        1,
        WAIT,
        is(TcpEventKind::Close, Direction::Active, client_addr, server),
    )[0]
    .clone();
    assert_eq!(close.failure.as_ref().unwrap().reason, FailureReason::Reset);
    assert_eq!(close.resets_received, 1);
    assert_eq!(close.conn_id, received.conn_id);
    assert!(close.to_string().contains("ended by ECONNRESET"), "{close}");
}

/// The probe does not follow FIN_WAIT2 / CLOSE_WAIT (no record is due there): a reset
/// record takes the state from the socket itself.
#[test]
fn reset_in_fin_wait2_reports_the_sockets_state() {
    if !privileged("reset_in_fin_wait2_reports_the_sockets_state") {
        return;
    }
    let h = Harness::start();
    let (mut client, accepted) = loopback_pair();
    let server = accepted.local_addr().unwrap();
    let client_addr = client.local_addr().unwrap();
    // Client FIN, acknowledged: client in FIN_WAIT2, server in CLOSE_WAIT.
    client.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    set_linger_zero(&accepted);
    drop(accepted);
    let mut buf = [0u8; 16];
    let err = client.read(&mut buf).expect_err("connection was reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);

    let received = h.wait_tcp(
        1,
        WAIT,
        is(
            TcpEventKind::ResetReceived,
            Direction::Active,
            client_addr,
            server,
        ),
    )[0]
    .clone();
    assert_eq!(received.state, "FIN_WAIT2");
    assert_eq!(received.previous_state, "FIN_WAIT2");
    let close = h.wait_tcp(
        1,
        WAIT,
        is(TcpEventKind::Close, Direction::Active, client_addr, server),
    )[0]
    .clone();
    assert_eq!(close.previous_state, "FIN_WAIT2");
    assert_eq!(close.conn_id, received.conn_id);
    let sent = h.wait_tcp(1, WAIT, |r| {
        r.event == TcpEventKind::ResetSent && r.local == server && r.remote == client_addr
    })[0]
        .clone();
    assert_eq!(sent.state, "CLOSE");
    let server_close = h.wait_tcp(
        1,
        WAIT,
        is(TcpEventKind::Close, Direction::Passive, server, client_addr),
    )[0]
    .clone();
    assert_eq!(server_close.previous_state, "CLOSE_WAIT");
}

#[test]
fn burst_of_10000_connections_loses_nothing() {
    if !privileged("burst_of_10000_connections_loses_nothing") {
        return;
    }
    const N: usize = 10_000;
    let mut h = Harness::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..N {
            let (s, _) = listener.accept().unwrap();
            drop(s);
        }
    });
    let started = std::time::Instant::now();
    for _ in 0..N {
        let c = TcpStream::connect(server).unwrap();
        drop(c);
    }
    acceptor.join().unwrap();
    let elapsed = started.elapsed();
    let connects = h.wait_tcp(N, Duration::from_secs(20), |r| {
        r.event == TcpEventKind::Connect && r.direction == Direction::Active && r.remote == server
    });
    assert_eq!(connects.len(), N);
    let accepts = h.wait_tcp(N, Duration::from_secs(20), |r| {
        r.event == TcpEventKind::Connect && r.direction == Direction::Passive && r.local == server
    });
    assert_eq!(accepts.len(), N);
    // Every connect succeeded: none may be reported failed, not even one whose
    // ESTABLISHED run the kernel skipped (a softirq nested in another BPF program).
    let failed = h.tcp(|r| r.event == TcpEventKind::ConnectFailed && r.remote == server);
    assert!(failed.is_empty(), "false connect failures: {failed:?}");
    let stats = h.stop();
    let tcp = &stats.kernel["tcp"];
    eprintln!(
        "{N} connections in {elapsed:?} ({:.0}/s); {stats}",
        N as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(tcp["events_lost_ring_full"], 0, "{stats}");
    assert_eq!(tcp["conn_map_full"], 0, "{stats}");
    assert_eq!(stats.decode_errors, 0);
    assert_eq!(stats.records_lagged, 0);
    assert_eq!(stats.total_lost(), 0);
}

fn config(edit: impl FnOnce(&mut hostscope::AgentConfig)) -> hostscope::AgentConfig {
    let mut c = hostscope::AgentConfig {
        loader: hostscope::loader::LoaderConfig {
            pin_dir: None,
            ..Default::default()
        },
        ..Default::default()
    };
    edit(&mut c);
    c
}

#[test]
fn ring_overflow_is_counted_not_silent() {
    if !privileged("ring_overflow_is_counted_not_silent") {
        return;
    }
    // One page of ring, no wakeups, drained every 3 s: a burst must overflow it.
    let mut h = Harness::start_with(config(|c| {
        c.loader.tcp_ring_bytes = 4096;
        c.loader.wakeup_bytes = u64::MAX;
        c.poll_interval = Duration::from_secs(3);
    }));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    for _ in 0..200 {
        let c = TcpStream::connect(server).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop((c, s));
    }
    std::thread::sleep(Duration::from_millis(200));
    let stats = h.stop();
    let tcp = &stats.kernel["tcp"];
    let lost = tcp["events_lost_ring_full"];
    let emitted = tcp["events_emitted"];
    assert!(lost > 0, "a 4 KiB ring cannot hold 800 records: {stats}");
    // Everything the probes wrote reached userspace; the rest is counted. Decoded
    // records come from every family's ring (a watched-path open elsewhere on the host
    // is a syscalls record), so compare with what every family emitted.
    let all_emitted: u64 = stats.kernel.values().map(|c| c["events_emitted"]).sum();
    assert_eq!(stats.records_decoded, all_emitted, "{stats}");
    assert!(emitted + lost >= 800, "{stats}");
    assert_eq!(stats.total_lost(), lost);
}

#[test]
fn full_connection_map_is_counted() {
    if !privileged("full_connection_map_is_counted") {
        return;
    }
    let mut h = Harness::start_with(config(|c| c.loader.tcp_max_conns = 8));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    // Held open: 20 active plus 20 passive sockets want entries in an 8-entry map.
    let held: Vec<_> = (0..20)
        .map(|_| {
            let c = TcpStream::connect(server).unwrap();
            let (s, _) = listener.accept().unwrap();
            (c, s)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let stats = h.stop();
    drop(held);
    assert!(stats.kernel["tcp"]["conn_map_full"] >= 30, "{stats}");
}

#[test]
fn kernel_offsets_match_an_independent_reader() {
    if !privileged("kernel_offsets_match_an_independent_reader") {
        return;
    }
    use hostscope::kernel::btf::KernelBtf;
    let btf = KernelBtf::load().expect("kernel BTF");
    let dump = std::process::Command::new("bpftool")
        .args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&dump.stdout);
    // bpftool lists direct members as `'name' type_id=N bits_offset=B` under the struct.
    let bpftool_offset = |structure: &str, member: &str| -> u32 {
        let header = format!("STRUCT '{structure}' size=");
        let body = text.split(&header).nth(1).expect("struct in bpftool dump");
        body.lines()
            .skip(1)
            .take_while(|l| l.starts_with('\t'))
            .find(|l| l.trim_start().starts_with(&format!("'{member}' ")))
            .and_then(|l| l.split("bits_offset=").nth(1))
            .and_then(|b| b.split_whitespace().next())
            .and_then(|b| b.parse::<u32>().ok())
            .map(|bits| bits / 8)
            .unwrap_or_else(|| panic!("{structure}.{member} not in bpftool dump"))
    };
    for (structure, member, size) in [
        ("sock", "sk_err", 4),
        ("sock_common", "skc_state", 1),
        ("tcp_sock", "srtt_us", 4),
        ("tcp_sock", "total_retrans", 4),
        ("tcp_sock", "bytes_acked", 8),
        ("tcp_sock", "bytes_received", 8),
    ] {
        let ours = btf.member(structure, member, size).unwrap();
        assert_eq!(
            ours.offset,
            bpftool_offset(structure, member),
            "{structure}.{member}"
        );
    }
    assert!(btf.member("tcp_sock", "no_such_member", 4).is_err());
    assert!(
        btf.member("tcp_sock", "srtt_us", 8).is_err(),
        "size mismatch is refused"
    );
}

#[test]
fn tracepoint_layouts_of_the_running_kernel_are_accepted() {
    if !privileged("tracepoint_layouts_of_the_running_kernel_are_accepted") {
        return;
    }
    use hostscope::{
        kernel::{btf::KernelBtf, mounts, tracefs::Tracefs},
        loader::tcp,
    };
    let tracefs = Tracefs::new(mounts::ensure_tracefs().unwrap());
    let btf = KernelBtf::load().unwrap();
    let plan = tcp::plan(Some(&btf), None, &tracefs);
    assert!(plan.unavailable.is_empty(), "{:?}", plan.unavailable);
    assert!(plan.missing_fields.is_empty(), "{:?}", plan.missing_fields);
    // A layout that moved is refused, not misread.
    let mut format = tracefs.format("sock", "inet_sock_set_state").unwrap();
    format
        .fields
        .iter_mut()
        .find(|f| f.name == "dport")
        .unwrap()
        .offset += 2;
    assert!(tcp::check_state_change_layout(&format).is_err());
}

/// `status` map fill: open connections are entries of the connection map, and they leave
/// it when they close.
#[test]
fn map_fill_counts_open_connections() {
    if !privileged("map_fill_counts_open_connections") {
        return;
    }
    let h = Harness::start();
    let conns = |h: &Harness| {
        let fill = h.agent().map_fill();
        fill.iter()
            .find(|m| m.name == hostscope_common::tcp::TCP_CONNS_MAP)
            .unwrap_or_else(|| panic!("no {} in {fill:?}", hostscope_common::tcp::TCP_CONNS_MAP))
            .clone()
    };
    let before = conns(&h);
    let max = hostscope::AgentConfig::default().loader.tcp_max_conns;
    assert_eq!(before.max_entries, max);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open: Vec<_> = (0..50)
        .map(|_| {
            let c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            (c, listener.accept().unwrap().0)
        })
        .collect();
    // At least the active end of each connection is tracked.
    let during = conns(&h);
    assert!(
        during.entries >= before.entries + 50,
        "{before:?} -> {during:?}"
    );
    drop(open);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let after = conns(&h);
        if after.entries + 50 <= during.entries {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "closed connections stay in the map: {during:?} -> {after:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
