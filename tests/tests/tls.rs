//! TLS family against real handshakes: `openssl s_server` / `s_client`, curl and
//! Python's ssl module on loopback, seen by the wire probe (cgroup_skb) and the OpenSSL
//! uprobes together.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use hostscope::{
    events::tls::{FailureSource, Outcome, Role, TlsRecord},
    tls::reason::FailureReason,
};
use hostscope_tests::{privileged, tls::*, Harness};

const WAIT: Duration = Duration::from_secs(8);

fn client_of(server: SocketAddr) -> impl Fn(&TlsRecord) -> bool {
    move |r| r.role == Some(Role::Client) && r.remote == Some(server)
}

fn server_at(server: SocketAddr) -> impl Fn(&TlsRecord) -> bool {
    move |r| r.role == Some(Role::Server) && r.local == Some(server)
}

fn assert_success(r: &TlsRecord, version: &str) {
    assert_eq!(r.outcome, Outcome::Success, "{r}");
    assert_eq!(r.version.as_deref(), Some(version), "{r}");
    assert_eq!(r.server_name.as_deref(), Some(SERVER_NAME), "{r}");
    assert!(
        r.cipher.as_deref().is_some_and(|c| c.starts_with("TLS_")),
        "{r}"
    );
    let d = r.duration_us.expect("duration");
    assert!(d > 0.0 && d < 2_000_000.0, "duration {d} µs");
    assert!(r.failure.is_none());
}

#[test]
fn tls12_handshake_with_parameters_and_certificate_expiry() {
    if !privileged("tls12_handshake_with_parameters_and_certificate_expiry") {
        return;
    }
    let h = Harness::start();
    let server = Server::start(&pki().valid(), &["-tls1_2"]);
    let (pid, ok) = s_client(server.addr, &[]);
    assert!(ok, "s_client failed against a valid server");
    let client = h.wait_tls(1, WAIT, client_of(server.addr))[0].clone();
    assert_success(&client, "TLSv1.2");
    assert_eq!(client.pid, Some(pid), "{client}\n{}", h.all_lines());
    assert!(
        client.cipher.as_deref().unwrap().starts_with("TLS_ECDHE_"),
        "{client}"
    );
    assert!(client.offered_versions.contains(&"TLSv1.2".to_string()));
    assert!(client.conn_id.is_some(), "joined with its TCP connection");
    // TLS 1.2 shows the server certificate: valid for ten more days.
    let left = client.cert_expires_in_s.expect("certificate expiry");
    assert!(
        (9 * 86_400..=10 * 86_400).contains(&left),
        "expires in {left} s"
    );
    assert_eq!(client.cert_subject.as_deref(), Some(SERVER_NAME));
    let server_side = h.wait_tls(1, WAIT, server_at(server.addr))[0].clone();
    assert_success(&server_side, "TLSv1.2");
}

#[test]
fn tls13_handshakes_from_curl_and_python() {
    if !privileged("tls13_handshakes_from_curl_and_python") {
        return;
    }
    let h = Harness::start();
    let server = Server::start(&pki().valid(), &[]);
    let (curl_pid, ok) = curl(server.addr);
    assert!(ok, "curl failed");
    let (py_pid, ok) = python_client(server.addr);
    assert!(ok, "python failed");
    let clients = h.wait_tls(2, WAIT, client_of(server.addr));
    for r in &clients {
        assert_success(r, "TLSv1.3");
        assert!(
            r.cert_expires_in_s.is_none(),
            "TLS 1.3 certificates are encrypted"
        );
    }
    let by_curl = clients
        .iter()
        .find(|r| r.pid == Some(curl_pid))
        .expect("curl's handshake");
    assert!(
        by_curl.alpn_offered.iter().any(|a| a == "http/1.1"),
        "{by_curl:?}"
    );
    assert!(
        clients.iter().any(|r| r.pid == Some(py_pid)),
        "python's handshake"
    );
}

#[test]
fn expired_certificate_over_tls12_is_seen_on_the_wire() {
    if !privileged("expired_certificate_over_tls12_is_seen_on_the_wire") {
        return;
    }
    let h = Harness::start();
    let server = Server::start(&pki().expired(), &["-tls1_2"]);
    let (pid, ok) = s_client(server.addr, &[]);
    assert!(!ok, "s_client must reject an expired certificate");
    let client = h.wait_tls(1, WAIT, client_of(server.addr))[0].clone();
    assert_eq!(client.outcome, Outcome::Failure);
    let f = client.failure.clone().unwrap();
    assert_eq!(f.reason, FailureReason::CertificateExpired, "{client}");
    assert_eq!(client.pid, Some(pid));
    assert!(client.cert_expires_in_s.unwrap() < 0, "{client}");
    // The server learns it from the client's alert, in clear: the wire's own view.
    let server_side = h.wait_tls(1, WAIT, server_at(server.addr))[0].clone();
    let f = server_side.failure.clone().unwrap();
    assert_eq!(f.reason, FailureReason::CertificateExpired, "{server_side}");
    assert_eq!(f.source, FailureSource::AlertReceived);
    assert_eq!(f.alert, Some(45));
    assert_eq!(server_side.remote, client.local, "the client's address");
    assert!(client.to_string().contains("HANDSHAKE FAILED"), "{client}");
}

#[test]
fn expired_certificate_over_tls13_gets_its_reason_from_openssl() {
    if !privileged("expired_certificate_over_tls13_gets_its_reason_from_openssl") {
        return;
    }
    let h = Harness::start();
    let server = Server::start(&pki().expired(), &["-tls1_3"]);
    let (pid, ok) = python_client(server.addr);
    assert!(!ok, "python must reject an expired certificate");
    let client = h.wait_tls(1, WAIT, client_of(server.addr))[0].clone();
    assert_eq!(client.version.as_deref(), Some("TLSv1.3"));
    let f = client.failure.clone().unwrap();
    assert_eq!(f.reason, FailureReason::CertificateExpired, "{client}");
    assert_eq!(f.source, FailureSource::X509Verify, "{client}");
    assert_eq!(f.verify_error, Some(10), "X509_V_ERR_CERT_HAS_EXPIRED");
    assert!(client.sources.contains(&"openssl"), "{client:?}");
    assert_eq!(client.pid, Some(pid));
}

#[test]
fn unknown_ca_is_named() {
    if !privileged("unknown_ca_is_named") {
        return;
    }
    let h = Harness::start();
    let server = Server::start(&pki().unknown_ca(), &[]);
    let (_, ok) = s_client(server.addr, &[]);
    assert!(!ok);
    let client = h.wait_tls(1, WAIT, client_of(server.addr))[0].clone();
    assert_eq!(client.failure.unwrap().reason, FailureReason::UnknownCa);
    let server_side = h.wait_tls(1, WAIT, server_at(server.addr))[0].clone();
    assert_eq!(
        server_side.failure.unwrap().reason,
        FailureReason::UnknownCa
    );
}

#[test]
fn protocol_version_mismatch() {
    if !privileged("protocol_version_mismatch") {
        return;
    }
    let h = Harness::start();
    let server = Server::start(&pki().valid(), &["-tls1_2"]);
    let (_, ok) = s_client(server.addr, &["-tls1_3"]);
    assert!(!ok);
    let client = h.wait_tls(1, WAIT, client_of(server.addr))[0].clone();
    let f = client.failure.clone().unwrap();
    assert_eq!(f.reason, FailureReason::ProtocolVersion, "{client}");
    assert_eq!(f.source, FailureSource::AlertReceived);
    assert_eq!(client.offered_versions, vec!["TLSv1.3".to_string()]);
    assert!(client.version.is_none(), "no ServerHello");
}

#[test]
fn client_closing_mid_handshake() {
    if !privileged("client_closing_mid_handshake") {
        return;
    }
    let h = Harness::start();
    let server = Server::start(&pki().valid(), &[]);
    let hello = client_hello_bytes();
    let local = send_and_close(server.addr, &hello);
    let server_side = h.wait_tls(1, WAIT, server_at(server.addr))[0].clone();
    assert_eq!(server_side.remote, Some(local));
    assert_eq!(server_side.outcome, Outcome::Failure);
    let f = server_side.failure.clone().unwrap();
    assert_eq!(f.reason, FailureReason::PeerClosed, "{server_side}");
    let client = h.wait_tls(1, WAIT, client_of(server.addr))[0].clone();
    assert_eq!(
        client.failure.clone().unwrap().reason,
        FailureReason::Aborted,
        "{client}"
    );
    assert_eq!(client.pid, Some(std::process::id()));
}

#[test]
fn non_tls_peers_make_no_false_handshake() {
    if !privileged("non_tls_peers_make_no_false_handshake") {
        return;
    }
    let h = Harness::start();
    // A plain-text service on the HTTPS port (any port if 443 is taken).
    let listener = TcpListener::bind("127.0.0.1:443")
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let plain = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    // 1. A plain HTTP client: no TLS at all, so no TLS record.
    let mut c = std::net::TcpStream::connect(plain).unwrap();
    let http_client = c.local_addr().unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    let _ = c.read(&mut buf);
    drop(c);
    // 2. A TLS client talking to it: a failure that says the peer is not TLS.
    let (_, ok) = s_client(plain, &[]);
    assert!(!ok);
    server.join().unwrap();
    let client = h.wait_tls(1, WAIT, client_of(plain))[0].clone();
    assert_eq!(
        client.failure.clone().unwrap().reason,
        FailureReason::NotTls,
        "{client}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let all = h.wait_tls(0, WAIT, |r| {
        r.remote == Some(plain) || r.local == Some(plain)
    });
    // The plain HTTP exchange is not TLS at all: nothing about it.
    assert!(
        !all.iter()
            .any(|r| r.local == Some(http_client) || r.remote == Some(http_client)),
        "{}",
        h.all_lines()
    );
    // The TLS attempt fails on both sockets, for what it is; never a success.
    for r in &all {
        assert_eq!(r.outcome, Outcome::Failure, "{r}");
        assert_eq!(
            r.failure.as_ref().unwrap().reason,
            FailureReason::NotTls,
            "{r}"
        );
    }
}

#[test]
fn openssl_copies_that_appear_later_get_probes() {
    if !privileged("openssl_copies_that_appear_later_get_probes") {
        return;
    }
    // A private copy of OpenSSL (new inodes), as a container image would bring.
    let dir = std::env::temp_dir().join(format!("hostscope-libssl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let system = hostscope::loader::tls::discover_libssl()
        .into_iter()
        .find(|p| !p.starts_with("/proc"))
        .expect("a system libssl.so.3");
    for lib in ["libssl.so.3", "libcrypto.so.3"] {
        std::fs::copy(system.with_file_name(lib), dir.join(lib)).unwrap();
    }
    let mut h = Harness::start();
    let before = h.agent().tls_libraries().len();
    let server = Server::start(&pki().expired(), &["-tls1_3"]);
    // Python waits for a line on stdin, so that the agent can find its mapping first.
    let script = format!(
        "import socket, ssl, sys\n\
         sys.stdin.readline()\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         s = socket.create_connection(({ip:?}, {port}))\n\
         try:\n    ctx.wrap_socket(s, server_hostname={name:?})\nexcept ssl.SSLError:\n    sys.exit(3)\n",
        ca = pki().ca().display().to_string(),
        ip = server.addr.ip().to_string(),
        port = server.addr.port(),
        name = SERVER_NAME
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .env("LD_LIBRARY_PATH", &dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let maps = format!("/proc/{pid}/maps");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&maps)
        .unwrap_or_default()
        .contains(&dir.display().to_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "python did not load the copy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let problems = h.agent_mut().refresh();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        h.agent().tls_libraries().len(),
        before + 1,
        "{:?}",
        h.agent().tls_libraries()
    );
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(!child.wait().unwrap().success());
    let r = h.wait_tls(1, WAIT, |r| {
        r.pid == Some(pid) && r.role == Some(Role::Client)
    })[0]
        .clone();
    let f = r.failure.clone().unwrap();
    assert_eq!(
        f.verify_error,
        Some(10),
        "the copy's uprobes reported the reason: {r}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn implicit_handshakes_are_reported_when_io_calls_are_probed() {
    if !privileged("implicit_handshakes_are_reported_when_io_calls_are_probed") {
        return;
    }
    // `openssl s_client` handshakes inside SSL_write/SSL_read, never SSL_connect.
    let h = Harness::start_with(hostscope::AgentConfig {
        loader: hostscope::loader::LoaderConfig {
            pin_dir: None,
            tls_uprobe_io: true,
            ..Default::default()
        },
        ..Default::default()
    });
    assert!(h
        .agent()
        .report()
        .iter()
        .any(|s| s.program == "tls_ssl_call" && s.hook.contains("SSL_read")));
    let server = Server::start(&pki().valid(), &[]);
    let (pid, ok) = s_client(server.addr, &[]);
    assert!(ok);
    let r = h.wait_tls(1, WAIT, client_of(server.addr))[0].clone();
    assert_success(&r, "TLSv1.3");
    assert_eq!(r.pid, Some(pid));
    assert_eq!(r.sources, vec!["wire", "openssl"], "{r}");
}
