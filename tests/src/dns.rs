//! DNS fixtures made with real servers and clients: Debian's `dnsmasq` serving a test zone
//! on loopback addresses of its own (or inside a network namespace), a validating
//! forwarder that answers SERVFAIL, nftables dropping a server's responses (inside a
//! namespace, never in the host's ruleset), network
//! namespaces with their own resolv.conf (search list, ndots), a non-DNS UDP peer on
//! port 53, and a small UDP client for lookup storms. Everything is undone on drop.
//!
//! Loopback addresses 127.0.0.77–82 belong to this module; no other suite uses them.

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// The test zone's server (in the host namespace and inside each resolver namespace).
pub const ZONE_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
/// A validating forwarder whose upstream serves the zone unsigned: SERVFAIL for all.
pub const SERVFAIL_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 78);
/// A zone server (in a namespace) whose responses nftables drops: lookups time out.
pub const SILENT_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 80);
/// A UDP service on port 53 that speaks no DNS.
pub const NOT_DNS_PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 81);
/// Where `svc.test` points: a loopback address a test can listen on.
pub const SVC_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 82);

/// One A and one AAAA record.
pub const WWW: &str = "www.test";
pub const WWW_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const WWW_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// `BIG_COUNT` A records (10.77.1.1…): ~1.6 KB of answer, more than a UDP answer may
/// carry (512 bytes without EDNS, 1232 with dig's EDNS buffer), so it comes back
/// truncated and the client asks again over TCP.
pub const BIG: &str = "big.test";
pub const BIG_COUNT: u8 = 100;
/// A name resolving to [`SVC_ADDR`].
pub const SVC: &str = "svc.test";
/// Every name under `bulk.test` answers 10.77.9.9 (storms use unique names).
pub const BULK_DOMAIN: &str = "bulk.test";
pub const BULK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 9);
/// Everything else under `test` is NXDOMAIN.
pub const UNKNOWN: &str = "nope.test";

pub const QTYPE_A: u16 = 1;
pub const QTYPE_AAAA: u16 = 28;

/// True when every tool in `tools` is installed. Otherwise: under `CI=true` the test
/// fails loudly; elsewhere it says why and is skipped. (`cargo xtask setup` installs
/// them: dnsmasq-base, bind9-dnsutils, nftables, iproute2.)
pub fn tools_present(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test}: {} not installed (cargo xtask setup installs it)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true: privileged tests must run)");
    }
    eprintln!("SKIPPED {why}");
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scratch_dir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hostscope-dns-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// -- network namespaces ------------------------------------------------------------------

/// A network namespace with only its loopback, and its own `/etc/resolv.conf`
/// (`/etc/netns/<name>/resolv.conf`, which `ip netns exec` mounts over the host's), so
/// glibc and Python resolve through a server the test controls and never the host's.
pub struct ResolverNs {
    pub name: String,
    etc: PathBuf,
}

impl ResolverNs {
    /// `resolv_conf`: the file's text, e.g. `nameserver 127.0.0.77\nsearch a.test\n`.
    pub fn new(tag: &str, resolv_conf: &str) -> ResolverNs {
        let name = format!("hs-dns-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(Command::new("ip").args(["netns", "add", &name]));
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ns = ResolverNs { name, etc };
        std::fs::create_dir_all(&ns.etc).unwrap();
        std::fs::write(ns.etc.join("resolv.conf"), resolv_conf).unwrap();
        sh(ns.command("ip").args(["link", "set", "lo", "up"]));
        // An interface with addresses of its own, as a pod's eth0: glibc's AI_ADDRCONFIG
        // (getent's ahosts*) asks no A or AAAA question where only loopback addresses
        // exist. Both ends of the pair stay inside the namespace, with host-only
        // prefixes: nothing can leave it.
        sh(ns
            .command("ip")
            .args(["link", "add", "hs0", "type", "veth", "peer", "name", "hs1"]));
        sh(ns
            .command("ip")
            .args(["addr", "add", "10.77.255.1/32", "dev", "hs0"]));
        sh(ns
            .command("ip")
            .args(["addr", "add", "fd77:ffff::1/128", "dev", "hs0", "nodad"]));
        for dev in ["hs0", "hs1"] {
            sh(ns.command("ip").args(["link", "set", dev, "up"]));
        }
        ns
    }

    /// `program` run inside the namespace (`ip netns exec` execs it: the child's pid is
    /// the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread that has joined the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid netns fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace")
    }
}

impl Drop for ResolverNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

// -- dnsmasq -----------------------------------------------------------------------------

/// A `dnsmasq` in the foreground, bound only to its own address (port 53), with no
/// configuration file, no /etc/hosts and no upstream from resolv.conf: it cannot fight a
/// system resolver, and a system one cannot answer in its place. Killed on drop.
pub struct Dnsmasq {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
    netns: Option<String>,
}

impl Dnsmasq {
    /// The test zone: [`WWW`] (A + AAAA), [`BIG`] (truncating), [`SVC`], anything under
    /// [`BULK_DOMAIN`], NXDOMAIN for every other name under `test`.
    pub fn zone(listen: Ipv4Addr, netns: Option<&ResolverNs>) -> Dnsmasq {
        let mut args = vec![
            "--local=/test/".to_string(),
            format!("--host-record={WWW},{WWW_V4},{WWW_V6}"),
            format!("--host-record={SVC},{SVC_ADDR}"),
            format!("--address=/{BULK_DOMAIN}/{BULK_ADDR}"),
        ];
        for i in 1..=BIG_COUNT {
            args.push(format!("--host-record={BIG},10.77.1.{i}"));
        }
        Self::start(listen, netns, &args)
    }

    /// A validating forwarder to `upstream` (a [`Dnsmasq::zone`]) with a trust anchor for
    /// the root: the upstream's answers are unsigned, so every one is bogus and the
    /// client gets SERVFAIL. (dnsmasq answers REFUSED when it cannot send to its upstream
    /// and nothing at all when the upstream is silent: this is how it says SERVFAIL.)
    pub fn servfail_forwarder(listen: Ipv4Addr, upstream: Ipv4Addr) -> Dnsmasq {
        let args = [
            format!("--server={upstream}"),
            "--dnssec".to_string(),
            // A made-up key digest: nothing the upstream serves can match it.
            format!("--trust-anchor=.,4242,8,2,{}", "7e".repeat(32)),
        ];
        Self::start(listen, None, &args)
    }

    fn start(listen: Ipv4Addr, netns: Option<&ResolverNs>, extra: &[String]) -> Dnsmasq {
        // dnsmasq binds with SO_REUSEADDR, so it would share the port with a server
        // already there (and the answers would be either's): refuse that first.
        let addr = SocketAddr::new(IpAddr::V4(listen), 53);
        let taken = move || {
            let udp = UdpSocket::bind(addr).err();
            let tcp = std::net::TcpListener::bind(addr).err();
            udp.or(tcp)
        };
        let taken = match netns {
            Some(ns) => ns.run(taken),
            None => taken(),
        };
        if let Some(e) = taken {
            panic!("{addr} is not free for the test's dnsmasq ({e}): another server holds it");
        }
        let dir = scratch_dir("dnsmasq");
        let log = std::fs::File::create(dir.join("dnsmasq.log")).unwrap();
        let mut cmd = match netns {
            Some(ns) => ns.command("dnsmasq"),
            None => Command::new("dnsmasq"),
        };
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-hosts",
            "--no-resolv",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--log-facility=-",
        ])
        .arg(format!("--listen-address={listen}"))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        let child = cmd
            .spawn()
            .expect("dnsmasq (cargo xtask setup installs it)");
        let mut d = Dnsmasq {
            child,
            dir,
            addr: SocketAddr::new(IpAddr::V4(listen), 53),
            netns: netns.map(|n| n.name.clone()),
        };
        d.wait_ready(netns);
        d
    }

    /// Until the server answers a query (its log on failure).
    fn wait_ready(&mut self, netns: Option<&ResolverNs>) {
        let server = self.addr;
        let probe = move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if lookup(
                    server,
                    "ready.probe.test",
                    QTYPE_A,
                    Duration::from_millis(200),
                )
                .is_ok()
                {
                    return true;
                }
            }
            false
        };
        let ready = match netns {
            Some(ns) => ns.run(probe),
            None => probe(),
        };
        if !ready || self.child.try_wait().unwrap().is_some() {
            panic!(
                "dnsmasq on {} (netns {:?}) did not answer; its log:\n{}",
                self.addr,
                self.netns,
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// -- nftables ----------------------------------------------------------------------------

/// Drops every UDP and TCP packet from port 53 of `server` on input inside `ns`, so the
/// server's answers never reach a client there: lookups to it time out. A table of its
/// own in the namespace's ruleset (never the host's), deleted on drop (also when the
/// test panics).
pub struct DropResponses {
    table: String,
    netns: String,
}

impl DropResponses {
    pub fn from(server: Ipv4Addr, ns: &ResolverNs) -> DropResponses {
        static N: AtomicU64 = AtomicU64::new(0);
        let table = format!(
            "hostscope_dns_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ruleset = format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0;\n    \
             ip saddr {server} udp sport 53 counter drop\n    \
             ip saddr {server} tcp sport 53 counter drop\n  }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&path, ruleset).unwrap();
        sh(ns.command("nft").arg("-f").arg(&path));
        let _ = std::fs::remove_file(path);
        DropResponses {
            table,
            netns: ns.name.clone(),
        }
    }

    fn nft(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "nft"]).args(args);
        c
    }

    /// Packets dropped so far (both rules).
    pub fn dropped(&self) -> u64 {
        let text = sh(&mut self.nft(&["list", "table", "inet", &self.table]));
        text.split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for DropResponses {
    fn drop(&mut self) {
        let _ = self.nft(&["delete", "table", "inet", &self.table]).status();
    }
}

// -- a UDP peer on port 53 that is not DNS -----------------------------------------------

/// What the peer answers: an SSH banner, longer than a DNS header but no DNS message
/// (read as one, it claims 12,846 questions).
pub const NOT_DNS_REPLY: &[u8] = b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n";

/// A UDP service bound to `addr` (port 53) that answers every datagram with
/// [`NOT_DNS_REPLY`]. Stopped on drop.
pub struct NotDnsPeer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotDnsPeer {
    pub fn start(ip: Ipv4Addr) -> NotDnsPeer {
        let addr = SocketAddr::new(IpAddr::V4(ip), 53);
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    r.fetch_add(1, Ordering::Relaxed);
                    let _ = sock.send_to(NOT_DNS_REPLY, from);
                }
            }
        });
        NotDnsPeer {
            addr,
            stop,
            received,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for NotDnsPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// -- a DNS client ------------------------------------------------------------------------

/// A standard query (RD set) for `name`/`qtype`, no EDNS.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(18 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// The rcode of a response to `id`, or why there is none.
pub fn response_rcode(id: u16, msg: &[u8]) -> Result<u8, String> {
    if msg.len() < 12 {
        return Err(format!("{} bytes: no DNS header", msg.len()));
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != id || msg[2] & 0x80 == 0 {
        return Err("not the response to our query".into());
    }
    Ok(msg[3] & 0x0f)
}

/// One lookup over UDP from a fresh socket: the rcode.
pub fn lookup(server: SocketAddr, name: &str, qtype: u16, wait: Duration) -> Result<u8, String> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(wait)).unwrap();
    let id = (std::process::id() as u16) ^ 0x5a5a;
    sock.send_to(&query(id, name, qtype), server)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
    response_rcode(id, &buf[..n])
}

/// What a storm did: answers received, and how long it took.
#[derive(Debug)]
pub struct Storm {
    pub answered: u64,
    pub unanswered: u64,
    pub elapsed: Duration,
}

/// `n` lookups of unique names under [`BULK_DOMAIN`] (`<prefix><i>.bulk.test`, A) over
/// `threads` sockets, one in flight per socket, each waiting up to a second for its
/// answer. Unanswered lookups are counted, not retried.
pub fn storm(server: SocketAddr, prefix: &str, n: usize, threads: usize) -> Storm {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                sock.connect(server).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let (mut ok, mut lost) = (0u64, 0u64);
                let mut buf = [0u8; 1500];
                for i in (t..n).step_by(threads) {
                    let id = i as u16;
                    let q = query(id, &format!("{prefix}{i}.{BULK_DOMAIN}"), QTYPE_A);
                    sock.send(&q).unwrap();
                    let answered = loop {
                        match sock.recv(&mut buf) {
                            // A late answer to an earlier query: skip it.
                            Ok(len) if response_rcode(id, &buf[..len]).is_err() => continue,
                            Ok(_) => break true,
                            Err(_) => break false,
                        }
                    };
                    if answered {
                        ok += 1;
                    } else {
                        lost += 1;
                    }
                }
                (ok, lost)
            })
        })
        .collect();
    let (mut answered, mut unanswered) = (0, 0);
    for w in workers {
        let (ok, lost) = w.join().expect("storm thread");
        answered += ok;
        unanswered += lost;
    }
    Storm {
        answered,
        unanswered,
        elapsed: start.elapsed(),
    }
}

/// Runs `cmd`, returning (pid, exit success, stdout).
pub fn run_client(cmd: &mut Command) -> (u32, bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let ok = child.wait().unwrap().success();
    (pid, ok, out)
}

/// `dig` with `args` (e.g. `["@127.0.0.77", "www.test", "A"]`): (pid, success, stdout).
pub fn dig(args: &[&str]) -> (u32, bool, String) {
    run_client(Command::new("dig").args(args))
}
