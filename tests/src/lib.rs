//! Fixtures for the integration tests: a running agent with a record collector, network
//! namespaces joined by veth pairs, nftables rules, and the privilege gate.
//!
//! Every test triggers real kernel activity (sockets, packets) and expects the records
//! the real probes produce.

pub mod dns;
pub mod json_agent;
pub mod metadata;
pub mod otlp;
pub mod tls;

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hostscope::{
    agent::SharedRecord,
    events::{tcp::TcpRecord, Record},
    loader::LoaderConfig,
    Agent, AgentConfig,
};

/// The `hostscope` binary the tests run as users do (`cargo xtask test` builds it first;
/// `HOSTSCOPE_BIN` points elsewhere).
pub fn hostscope_bin() -> std::path::PathBuf {
    built_binary("HOSTSCOPE_BIN", "debug", "cargo build -p hostscope")
}

/// The release build, for a test whose subject is throughput (a debug agent decodes
/// several times slower than the one users run): `cargo xtask test` builds it (it is the
/// image's binary); `HOSTSCOPE_RELEASE_BIN` points elsewhere.
pub fn hostscope_release_bin() -> std::path::PathBuf {
    built_binary(
        "HOSTSCOPE_RELEASE_BIN",
        "release",
        "cargo build --release -p hostscope",
    )
}

/// `$env`, else target/<profile>/hostscope; it must exist (`build` says how).
fn built_binary(env: &str, profile: &str, build: &str) -> std::path::PathBuf {
    let path = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(profile)
                .join("hostscope")
        });
    assert!(
        path.exists(),
        "{} missing: build it with `{build}`",
        path.display()
    );
    path
}

/// True when the test may load probes. Without root: under `CI=true` the test fails
/// loudly; elsewhere it says why and is skipped.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    let why = format!("{test}: needs root to load eBPF probes");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true: privileged tests must run)");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// A running agent (no pinning) plus every record it produced since start.
pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub agent: Option<Agent>,
    records: Arc<Mutex<Vec<SharedRecord>>>,
}

impl Harness {
    pub fn start() -> Harness {
        Self::start_with(AgentConfig {
            loader: LoaderConfig {
                pin_dir: None,
                ..LoaderConfig::default()
            },
            ..AgentConfig::default()
        })
    }

    pub fn start_with(config: AgentConfig) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let agent = rt
            .block_on(async { Agent::start(&config) })
            .unwrap_or_else(|e| panic!("agent failed to start: {e:#}"));
        for status in agent.report() {
            eprintln!("probe {status}");
        }
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut rx = agent.subscribe();
        let sink = records.clone();
        rt.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(r) => sink.lock().unwrap().push(r),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("test collector lagged by {n} records")
                    }
                    Err(_) => break,
                }
            }
        });
        Harness {
            rt,
            agent: Some(agent),
            records,
        }
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    pub fn agent_mut(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent running")
    }

    /// Every record seen so far, of any family.
    pub fn records(&self) -> Vec<SharedRecord> {
        self.records.lock().unwrap().clone()
    }

    /// TCP records matching `pred` seen so far.
    pub fn tcp(&self, pred: impl Fn(&TcpRecord) -> bool) -> Vec<TcpRecord> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| match &**r {
                Record::Tcp(t) if pred(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits until at least `n` TCP records match `pred`, or panics after `timeout`.
    pub fn wait_tcp(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&TcpRecord) -> bool,
    ) -> Vec<TcpRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.tcp(&pred);
            if found.len() >= n {
                return found;
            }
            if Instant::now() > deadline {
                let all = self.tcp(|_| true);
                panic!(
                    "expected {n} matching TCP records within {timeout:?}, got {}; all records:\n{}",
                    found.len(),
                    all.iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// TLS handshake records matching `pred`, waiting until at least `n` (or panics).
    pub fn wait_tls(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&hostscope::events::tls::TlsRecord) -> bool,
    ) -> Vec<hostscope::events::tls::TlsRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<_> = self
                .records
                .lock()
                .unwrap()
                .iter()
                .filter_map(|r| match &**r {
                    Record::Tls(t) if pred(t) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            if found.len() >= n {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} matching TLS records within {timeout:?}, got {}; all records:\n{}",
                    found.len(),
                    self.all_lines()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every record so far, one line each (for failure messages).
    pub fn all_lines(&self) -> String {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the agent (final drain) and returns its counters.
    pub fn stop(&mut self) -> hostscope::stats::AgentStats {
        let agent = self.agent.take().expect("agent running");
        self.rt.block_on(agent.stop())
    }
}

/// `TCP_INFO` of a socket, the kernel's own view to compare records against.
pub fn tcp_info(fd: &impl AsRawFd) -> libc::tcp_info {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(
            rc,
            0,
            "getsockopt(TCP_INFO): {}",
            std::io::Error::last_os_error()
        );
        info
    }
}

pub fn set_sockopt_int(fd: &impl AsRawFd, level: i32, opt: i32, value: i32) {
    // SAFETY: valid fd and a pointer to an int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// `SO_LINGER {on, 0}`: close() then sends a RST instead of a FIN.
pub fn set_linger_zero(fd: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a pointer to a linger struct of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// A blocking TCP connect from a raw socket, so options (TCP_SYNCNT) can be set before
/// connecting. Returns the socket and connect's result.
pub fn connect_with_syncnt(to: SocketAddr, syn_retries: i32) -> (OwnedFd, std::io::Result<()>) {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_sockopt_int(&fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, syn_retries);
    let sa = raw_sockaddr(to);
    // SAFETY: sa holds a sockaddr of the length passed.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), sa.0.as_ptr().cast(), sa.1) };
    let res = if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    (fd, res)
}

fn raw_sockaddr(addr: SocketAddr) -> ([u8; 28], libc::socklen_t) {
    let mut buf = [0u8; 28];
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in (16 bytes) fits in the 28-byte buffer.
            unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast(), sin) };
            (buf, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 is exactly 28 bytes.
            unsafe { std::ptr::write_unaligned(buf.as_mut_ptr().cast(), sin6) };
            (buf, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// A closed port: bound once, then released.
pub fn closed_port(ip: IpAddr) -> SocketAddr {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind");
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to ours by a veth pair: `host_ip` on our side,
/// `ns_ip` inside. Removed (with its rules) on drop.
pub struct NetNs {
    pub name: String,
    host_if: String,
    pub host_ip: IpAddr,
    pub ns_ip: IpAddr,
}

impl NetNs {
    /// `index` keeps one binary's namespaces apart, the pid concurrent test binaries
    /// (10.<210..250>.<index>.0/24).
    pub fn new(tag: &str, index: u8) -> NetNs {
        let net = 210 + std::process::id() % 41;
        let name = format!("hs-{tag}-{}", std::process::id());
        let host_if = format!("hsh{index}p{}", std::process::id() % 10000);
        let ns_if = format!("hsn{index}p{}", std::process::id() % 10000);
        let host_ip: IpAddr = format!("10.{net}.{index}.1").parse().unwrap();
        let ns_ip: IpAddr = format!("10.{net}.{index}.2").parse().unwrap();
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
            ns_ip,
        };
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        sh(&["ip", "link", "set", &ns_if, "netns", &name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if]);
        ns.exec(&["ip", "link", "set", &ns_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// Adds one rule to an input-hook filter chain inside the namespace.
    pub fn drop_input(&self, rule: &str) {
        let ruleset = format!(
            "table inet hostscope_test {{\n  chain input {{\n    type filter hook input priority 0;\n    {rule}\n  }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, ruleset).expect("write ruleset");
        self.exec(&["nft", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(path);
    }

    /// Packets counted by the first `counter` in the namespace's ruleset.
    pub fn counted_packets(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "list", "ruleset"])
            .output()
            .expect("nft list ruleset");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in ruleset:\n{text}"))
    }

    /// A listener bound inside the namespace (by a thread that joins it for the bind).
    pub fn listen(&self, port: u16) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::new(self.ns_ip, port);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid netns fd affects only this thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpListener::bind(addr).expect("bind in netns")
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One HTTP/1.0 request to the agent's (or Prometheus') endpoint: (status code, headers
/// lowercased, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(a) = accept {
        req.push_str(&format!("Accept: {a}\r\n"));
    }
    req.push_str("\r\n");
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer}"));
    (code, head.to_lowercase(), body.to_string())
}
