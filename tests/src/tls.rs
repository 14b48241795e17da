//! TLS fixtures made with the real `openssl` tool: a test CA, certificates (valid,
//! expired, from an unknown CA), `openssl s_server` peers and client runs.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub const SERVER_NAME: &str = "api.test";

pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// Valid for ten days, for `api.test`, signed by the test CA.
    pub fn valid(&self) -> PathBuf {
        self.dir.join("valid.pem")
    }
    /// Expired in February 2020, otherwise like `valid`.
    pub fn expired(&self) -> PathBuf {
        self.dir.join("expired.pem")
    }
    /// Valid, but signed by a CA the clients do not trust.
    pub fn unknown_ca(&self) -> PathBuf {
        self.dir.join("unknown-ca.pem")
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Made once per test binary.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hostscope-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("db/index.txt"), "").unwrap();
        std::fs::write(dir.join("db/serial"), "01\n").unwrap();
        std::fs::write(dir.join("ext.cnf"), format!("subjectAltName=DNS:{SERVER_NAME}\n")).unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {d}/db/index.txt\nserial = {d}/db/serial\n\
                 new_certs_dir = {d}/db\ndefault_md = sha256\npolicy = any\ncopy_extensions = copy\n\
                 [any]\ncommonName = supplied\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let subj_ca = "/CN=hostscope test CA";
        openssl(&dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", subj_ca]);
        openssl(&dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days", "30", "-subj", "/CN=untrusted CA"]);
        let subj = format!("/CN={SERVER_NAME}");
        openssl(&dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", &subj, "-addext", &format!("subjectAltName=DNS:{SERVER_NAME}")]);
        openssl(&dir, &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "valid.pem", "-days", "10", "-extfile", "ext.cnf"]);
        openssl(&dir, &["x509", "-req", "-in", "server.csr", "-CA", "other.pem", "-CAkey", "other.key", "-CAcreateserial", "-out", "unknown-ca.pem", "-days", "10", "-extfile", "ext.cnf"]);
        openssl(&dir, &["ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", "server.csr", "-out", "expired.pem", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z"]);
        Pki { dir }
    })
}

/// An `openssl s_server` on a free loopback port; killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Server {
    /// `extra`: e.g. `["-tls1_2"]`. The server answers `GET` with its status page.
    pub fn start(cert: &Path, extra: &[&str]) -> Server {
        let addr = free_port();
        let pki = pki();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(pki.key())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        wait_listening(addr);
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls /proc/net/tcp* for a listener, without connecting (a probe connection would
/// be traffic of its own).
pub fn wait_listening(addr: SocketAddr) {
    let port = format!(":{:04X} ", addr.port());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            // Local address column, state 0A = LISTEN.
            if text.lines().any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&port))
                    && l.split_whitespace().nth(3) == Some("0A")
            }) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {addr}");
}

/// Runs `openssl s_client` to completion; returns (pid, exit success).
pub fn s_client(addr: SocketAddr, extra: &[&str]) -> (u32, bool) {
    let pki = pki();
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-servername",
            SERVER_NAME,
            "-connect",
        ])
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(pki.ca())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
    }
    let ok = wait_timeout(&mut child, Duration::from_secs(10));
    (pid, ok)
}

/// Python's `ssl` module (SSL_do_handshake): returns (pid, handshake succeeded).
pub fn python_client(addr: SocketAddr) -> (u32, bool) {
    let pki = pki();
    let script = format!(
        "import socket, ssl, sys\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         s = socket.create_connection(({ip:?}, {port}))\n\
         try:\n    t = ctx.wrap_socket(s, server_hostname={name:?})\n    t.close()\nexcept ssl.SSLError as e:\n    sys.exit(3)\n",
        ca = pki.ca().display().to_string(),
        ip = addr.ip().to_string(),
        port = addr.port(),
        name = SERVER_NAME
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let pid = child.id();
    let ok = wait_timeout(&mut child, Duration::from_secs(10));
    (pid, ok)
}

/// curl over TLS with the test CA; returns (pid, success).
pub fn curl(addr: SocketAddr) -> (u32, bool) {
    let pki = pki();
    let mut child = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "5", "--cacert"])
        .arg(pki.ca())
        .arg("--resolve")
        .arg(format!("{SERVER_NAME}:{}:{}", addr.port(), addr.ip()))
        .arg(format!("https://{SERVER_NAME}:{}/", addr.port()))
        .spawn()
        .expect("curl");
    let pid = child.id();
    let ok = wait_timeout(&mut child, Duration::from_secs(10));
    (pid, ok)
}

fn wait_timeout(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A ClientHello's bytes, made by Python's ssl module (memory BIOs, no socket).
pub fn client_hello_bytes() -> Vec<u8> {
    let script = format!(
        "import ssl, sys\n\
         ctx = ssl.create_default_context()\n\
         i, o = ssl.MemoryBIO(), ssl.MemoryBIO()\n\
         t = ctx.wrap_bio(i, o, server_hostname={SERVER_NAME:?})\n\
         try:\n    t.do_handshake()\nexcept ssl.SSLWantReadError:\n    pass\n\
         sys.stdout.buffer.write(o.read())\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success() && out.stdout.len() > 100,
        "no ClientHello from python"
    );
    out.stdout
}

/// Connects, sends `bytes`, and closes without reading.
pub fn send_and_close(addr: SocketAddr, bytes: &[u8]) -> SocketAddr {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let local = s.local_addr().unwrap();
    drop(s);
    local
}
