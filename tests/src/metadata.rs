//! Fixtures for the metadata tests: real cgroup v2 directories in node layouts, a child
//! process moved into one that makes a refused TCP connect on demand, a kubelet log tree.

use std::{
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh pseudo-random 64-hex container id (unique per call in this process).
pub fn container_id() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = String::new();
    for _ in 0..4 {
        // xorshift: distinct, hex-looking ids without a rand dependency.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out
}

/// A fresh pod UID (8-4-4-4-12 hex).
pub fn pod_uid() -> String {
    let h = container_id();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The cgroup v2 mount, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    hostscope::kernel::mounts::find("cgroup2")
        .expect("mountinfo")
        .expect("a cgroup2 mount")
}

/// A tree of cgroups under `<mount>/hostscope-test-<pid>-<n>/`, removed on drop (its
/// processes moved back to the cgroup the test runs in first).
pub struct CgroupTree {
    pub mount: PathBuf,
    pub root: PathBuf,
    home: PathBuf,
}

impl Default for CgroupTree {
    fn default() -> Self {
        Self::new()
    }
}

impl CgroupTree {
    pub fn new() -> CgroupTree {
        let mount = cgroup2_mount();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let root = mount.join(format!("hostscope-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        let own = hostscope::metadata::cgroup::path_of_pid(std::process::id()).expect("own cgroup");
        let home = mount.join(own.trim_start_matches('/'));
        CgroupTree { mount, root, home }
    }

    /// Creates `rel` (e.g. `kubepods.slice/…/cri-containerd-<id>.scope`) and returns its
    /// directory.
    pub fn make(&self, rel: &str) -> PathBuf {
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        dir
    }

    /// The path of `dir` as the agent sees it (relative to the mount, with a leading `/`).
    pub fn rel(&self, dir: &Path) -> String {
        format!("/{}", dir.strip_prefix(&self.mount).unwrap().display())
    }

    fn remove(dir: &Path, home: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove(&e.path(), home);
                }
            }
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(home.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        Self::remove(&self.root, &self.home);
    }
}

/// A `bash` that, each time it is told to, connects to 127.0.0.1:`port` (refused: the
/// port is closed) and waits for the next line; moved into a cgroup before acting.
pub struct Connector {
    pub child: Child,
    pub port: u16,
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Connector {
    pub fn spawn() -> Connector {
        let port = closed_port();
        // The failed redirection is not fatal for a plain command (unlike `exec`).
        let script = format!("while read line; do : 2>/dev/null </dev/tcp/127.0.0.1/{port}; done");
        let child = Command::new("bash")
            .args(["-c", &script, "hostscope-connector", "--password=hunter2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bash");
        Connector { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Moves the process into the cgroup directory `dir`.
    pub fn move_to(&self, dir: &Path) {
        std::fs::write(dir.join("cgroup.procs"), self.pid().to_string())
            .unwrap_or_else(|e| panic!("moving {} into {}: {e}", self.pid(), dir.display()));
    }

    pub fn connect(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubelet log tree (`pods/`, `containers/`) in a temporary directory.
pub struct KubeletTree {
    pub root: PathBuf,
}

impl Default for KubeletTree {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeletTree {
    pub fn new() -> KubeletTree {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("hostscope-kubelet-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("pods")).unwrap();
        std::fs::create_dir_all(root.join("containers")).unwrap();
        KubeletTree { root }
    }

    /// Writes a pod's directory and its containers' log symlinks, as the kubelet does.
    pub fn add_pod(&self, namespace: &str, pod: &str, uid: &str, containers: &[(&str, &str)]) {
        let pod_dir = self.root.join(format!("pods/{namespace}_{pod}_{uid}"));
        for (name, id) in containers {
            std::fs::create_dir_all(pod_dir.join(name)).unwrap();
            let log = pod_dir.join(format!("{name}/0.log"));
            std::fs::write(&log, b"").unwrap();
            std::os::unix::fs::symlink(
                &log,
                self.root
                    .join(format!("containers/{pod}_{namespace}_{name}-{id}.log")),
            )
            .unwrap();
        }
    }
}

impl Drop for KubeletTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
