//! Process identity from /proc (via the `procfs` crate): executable, command line
//! (bounded, secrets redacted), parent, owner, start time. Cached per pid; an entry is
//! checked against the process's start time when revalidated, so a reused pid never
//! inherits the identity of the process that had it before.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

/// How command lines are shortened and scrubbed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CmdlinePolicy {
    /// Longest command line kept, in bytes (longer ones are cut with `…`).
    pub max_bytes: usize,
    /// An argument whose name contains one of these (case-insensitive) has its value
    /// replaced by `***`: `--password=x`, `token=x`, `--api-key x`, `-p` is not matched.
    pub redact_keys: Vec<String>,
}

pub const REDACTED: &str = "***";

impl Default for CmdlinePolicy {
    fn default() -> Self {
        CmdlinePolicy {
            max_bytes: 1024,
            redact_keys: [
                "password",
                "passwd",
                "secret",
                "token",
                "apikey",
                "api-key",
                "api_key",
                "access-key",
                "access_key",
                "private-key",
                "credential",
                "auth",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl CmdlinePolicy {
    fn is_secret_name(&self, name: &str) -> bool {
        let name = name.trim_start_matches('-').to_ascii_lowercase();
        !name.is_empty()
            && self
                .redact_keys
                .iter()
                .any(|k| name.contains(&k.to_ascii_lowercase()))
    }

    /// Redacts, joins with spaces and bounds the length.
    pub fn render(&self, args: &[String]) -> String {
        let mut out = String::new();
        let mut redact_next = false;
        for arg in args {
            let shown = if redact_next {
                redact_next = false;
                REDACTED.to_string()
            } else if let Some((name, _)) = arg.split_once('=') {
                if self.is_secret_name(name) {
                    format!("{name}={REDACTED}")
                } else {
                    redact_url_password(arg)
                }
            } else if arg.starts_with('-') && self.is_secret_name(arg) {
                // `--password value`: the value is the next argument.
                redact_next = true;
                arg.clone()
            } else {
                redact_url_password(arg)
            };
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&shown);
            if out.len() > self.max_bytes {
                break;
            }
        }
        if out.len() > self.max_bytes {
            let mut cut = self.max_bytes;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
        }
        out
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`.
fn redact_url_password(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://") else {
        return arg.to_string();
    };
    let rest = &arg[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return arg.to_string();
    };
    let Some(colon) = authority[..at].find(':') else {
        return arg.to_string();
    };
    format!(
        "{}{}:{REDACTED}{}",
        &arg[..scheme_end + 3],
        &authority[..colon],
        &rest[at..]
    )
}

/// What /proc says of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub parent_pid: u32,
    pub name: String,
    pub exe: Option<String>,
    pub command_line: String,
    pub uid: Option<u32>,
    pub owner: Option<String>,
    /// Start time in clock ticks since boot: the pid-reuse check.
    pub start_ticks: u64,
    /// `comm` when read: changes on exec (same pid, same start time, new program).
    pub comm: String,
    /// Read mid-exec (no command line yet): returned, not cached.
    pub transient: bool,
    /// RFC 3339 start time.
    pub creation_time: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessStats {
    pub cached: usize,
    pub reads: u64,
    pub gone: u64,
    pub evicted_exited: u64,
    pub evicted_reused: u64,
    pub evicted_exec: u64,
}

struct Inner {
    by_pid: HashMap<u32, Arc<ProcessInfo>>,
    stats: ProcessStats,
}

pub struct ProcessCache {
    /// Changed live by [`ProcessCache::set_policy`].
    policy: std::sync::RwLock<CmdlinePolicy>,
    proc_root: std::path::PathBuf,
    users: Users,
    inner: Mutex<Inner>,
}

impl ProcessCache {
    pub fn new(policy: CmdlinePolicy) -> ProcessCache {
        ProcessCache {
            policy: std::sync::RwLock::new(policy),
            proc_root: "/proc".into(),
            users: Users::load(),
            inner: Mutex::new(Inner {
                by_pid: HashMap::new(),
                stats: ProcessStats::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached process, reading /proc on a miss. `None` when it already exited.
    pub fn get(&self, pid: u32) -> Option<Arc<ProcessInfo>> {
        if let Some(p) = self.lock().by_pid.get(&pid) {
            return Some(p.clone());
        }
        let info = self.read(pid);
        let mut inner = self.lock();
        inner.stats.reads += 1;
        match info {
            Some(info) => {
                let info = Arc::new(info);
                if !info.transient {
                    inner.by_pid.insert(pid, info.clone());
                }
                Some(info)
            }
            None => {
                inner.stats.gone += 1;
                None
            }
        }
    }

    /// Reads a process without caching it.
    pub fn read(&self, pid: u32) -> Option<ProcessInfo> {
        let proc =
            procfs::process::Process::new_with_root(self.proc_root.join(pid.to_string())).ok()?;
        let stat = proc.stat().ok()?;
        let exe = proc.exe().ok().map(|p| p.display().to_string());
        let args = proc.cmdline().unwrap_or_default();
        let uid = proc.uid().ok();
        const PF_KTHREAD: u32 = 0x0020_0000;
        let kthread = stat.flags & PF_KTHREAD != 0;
        // Kernel threads have no command line: `[comm]` like ps. A user process without
        // one is mid-exec: its name for now, not cached.
        let transient = args.is_empty() && !kthread;
        let command_line = match (args.is_empty(), kthread) {
            (true, true) => format!("[{}]", stat.comm),
            (true, false) => stat.comm.clone(),
            _ => self
                .policy
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .render(&args),
        };
        let name = exe
            .as_deref()
            .and_then(|e| e.rsplit('/').next())
            .map(|n| n.trim_end_matches(" (deleted)").to_string())
            .unwrap_or_else(|| stat.comm.clone());
        Some(ProcessInfo {
            pid,
            parent_pid: stat.ppid.max(0) as u32,
            name,
            exe,
            command_line,
            uid,
            owner: uid.and_then(|u| self.users.name(u)),
            start_ticks: stat.starttime,
            comm: stat.comm.clone(),
            transient,
            creation_time: creation_time(stat.starttime),
        })
    }

    /// Evicts exited processes, reused pids (start time changed) and processes that
    /// exec'd another program (comm changed). Returns the pids evicted, so dependent
    /// caches can drop them too.
    pub fn revalidate(&self) -> Vec<u32> {
        self.revalidate_some(None)
    }

    /// [`Self::revalidate`], reading `/proc/<pid>/stat` (start time, comm) only for the
    /// pids in `full` (those whose identity was used since the last pass); the others
    /// are only checked for existence with `kill(pid, 0)`, ~50x cheaper. A reused pid of
    /// an idle entry is caught on the first pass after it is used again.
    pub fn revalidate_some(&self, full: Option<&std::collections::HashSet<u32>>) -> Vec<u32> {
        let entries: Vec<(u32, u64, String)> = self
            .lock()
            .by_pid
            .iter()
            .map(|(pid, p)| (*pid, p.start_ticks, p.comm.clone()))
            .collect();
        let mut evicted = Vec::new();
        let (mut exited, mut reused, mut execd) = (0, 0, 0);
        for (pid, start, comm) in entries {
            if full.is_some_and(|f| !f.contains(&pid)) {
                if !alive(pid) {
                    exited += 1;
                    evicted.push(pid);
                }
                continue;
            }
            match stat_start_and_comm(&self.proc_root, pid) {
                Some((s, c)) if s == start && c == comm => {}
                Some((s, _)) if s == start => {
                    execd += 1;
                    evicted.push(pid);
                }
                Some(_) => {
                    reused += 1;
                    evicted.push(pid);
                }
                None => {
                    exited += 1;
                    evicted.push(pid);
                }
            }
        }
        let mut inner = self.lock();
        for pid in &evicted {
            inner.by_pid.remove(pid);
        }
        inner.stats.evicted_exited += exited;
        inner.stats.evicted_reused += reused;
        inner.stats.evicted_exec += execd;
        evicted
    }

    /// A new command-line policy: cached processes are dropped, since their command
    /// lines were rendered under the old one; the next lookup reads /proc again.
    pub fn set_policy(&self, policy: CmdlinePolicy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
        self.lock().by_pid.clear();
    }

    /// Whether `pid` has a cached entry (revalidated by [`Self::revalidate_some`]).
    pub fn contains(&self, pid: u32) -> bool {
        self.lock().by_pid.contains_key(&pid)
    }

    pub fn stats(&self) -> ProcessStats {
        let inner = self.lock();
        let mut s = inner.stats.clone();
        s.cached = inner.by_pid.len();
        s
    }
}

/// Whether a process exists (zombies included), without reading /proc.
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks existence and permission; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Field 22 (start time) and `comm` of /proc/<pid>/stat, read directly (the
/// revalidation runs for every cached pid, so it avoids parsing the whole line into a
/// struct). `comm` may hold spaces and parentheses: fields are counted after the last `)`.
fn stat_start_and_comm(proc_root: &std::path::Path, pid: u32) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(proc_root.join(format!("{pid}/stat"))).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // After `)`: state is field 3, starttime is field 22 → index 19.
    let start = text[close + 1..].split_whitespace().nth(19)?.parse().ok()?;
    Some((start, comm))
}

fn creation_time(start_ticks: u64) -> Option<String> {
    let boot = procfs::boot_time_secs().ok()?;
    let tps = procfs::ticks_per_second().max(1);
    let ms = boot * 1000 + start_ticks * 1000 / tps;
    Some(rfc3339_ms(ms))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix milliseconds (civil-from-days, no tz crate).
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        unix_ms % 1000
    )
}

/// uid → user name from /etc/passwd, read once (owners of host processes; container
/// users are in the container's own passwd, so only the uid is meaningful there).
struct Users(HashMap<u32, String>);

impl Users {
    fn load() -> Users {
        let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Users(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let uid = f.nth(1)?.parse().ok()?;
                    Some((uid, name.to_string()))
                })
                .collect(),
        )
    }

    fn name(&self, uid: u32) -> Option<String> {
        self.0.get(&uid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn redacts_secret_arguments() {
        let p = CmdlinePolicy::default();
        assert_eq!(
            p.render(&args(&["db", "--password=hunter2", "--user=bob"])),
            "db --password=*** --user=bob"
        );
        assert_eq!(
            p.render(&args(&["x", "--api-key", "abc", "--port", "80"])),
            "x --api-key *** --port 80"
        );
        assert_eq!(
            p.render(&args(&["env", "GITHUB_TOKEN=ghp_x"])),
            "env GITHUB_TOKEN=***"
        );
        assert_eq!(
            p.render(&args(&["psql", "postgres://app:s3cr3t@db:5432/x"])),
            "psql postgres://app:***@db:5432/x"
        );
        // Not secrets: a plain URL, a user without password, a flag without value.
        assert_eq!(
            p.render(&args(&["curl", "https://a@b/c", "http://h/p?q=1", "-v"])),
            "curl https://a@b/c http://h/p?q=1 -v"
        );
        // A configurable list: nothing redacted when it is empty.
        let none = CmdlinePolicy {
            redact_keys: vec![],
            ..CmdlinePolicy::default()
        };
        assert_eq!(none.render(&args(&["a", "--password=x"])), "a --password=x");
        let custom = CmdlinePolicy {
            redact_keys: vec!["PIN".into()],
            ..CmdlinePolicy::default()
        };
        assert_eq!(
            custom.render(&args(&["a", "--pin=1234", "--token=t"])),
            "a --pin=*** --token=t"
        );
    }

    #[test]
    fn bounds_length_on_char_boundary() {
        let p = CmdlinePolicy {
            max_bytes: 10,
            ..CmdlinePolicy::default()
        };
        let out = p.render(&args(&["ééééééééé", "more"]));
        assert!(out.ends_with('…'));
        assert!(out.len() <= 10 + '…'.len_utf8());
        let long: Vec<String> = (0..10_000).map(|i| format!("arg{i}")).collect();
        let out = CmdlinePolicy::default().render(&long);
        assert!(out.len() <= 1024 + 3, "{}", out.len());
    }

    #[test]
    fn reads_own_process_and_detects_exit() {
        let cache = ProcessCache::new(CmdlinePolicy::default());
        let me = cache.get(std::process::id()).expect("own process");
        assert_eq!(me.pid, std::process::id());
        // SAFETY: getppid has no preconditions.
        assert_eq!(me.parent_pid, unsafe { libc::getppid() } as u32);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(me.exe.as_deref(), exe.to_str());
        assert_eq!(me.name, exe.file_name().unwrap().to_str().unwrap());
        // SAFETY: getuid has no preconditions.
        assert_eq!(me.uid, Some(unsafe { libc::getuid() }));
        assert!(me
            .creation_time
            .as_deref()
            .is_some_and(|t| t.ends_with('Z')));

        // A bash waiting on its stdin (GNU sleep would reject the `--token` option).
        let mut child = std::process::Command::new("bash")
            .args(["-c", "read x", "hs-test", "--token=abc"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until its exec, the child is a copy of this test binary.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.starts_with(b"bash")) {
            assert!(std::time::Instant::now() < deadline, "child never exec'd");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let c = cache.get(pid).expect("child");
        assert_eq!(c.name, "bash");
        assert_eq!(c.command_line, "bash -c read x hs-test --token=***");
        assert!(cache.revalidate().is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        // An idle entry (not used since the last pass): the existence check sees the exit.
        let none = std::collections::HashSet::new();
        assert_eq!(cache.revalidate_some(Some(&none)), vec![pid]);
        assert_eq!(cache.stats().evicted_exited, 1);
        assert!(cache.get(pid).is_none());
    }

    #[test]
    fn exec_evicts_the_old_program() {
        use std::io::Write;
        let cache = ProcessCache::new(CmdlinePolicy::default());
        let mut child = std::process::Command::new("bash")
            .args(["-c", "read x; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.starts_with(b"bash")) {
            assert!(
                std::time::Instant::now() < deadline,
                "child never exec'd bash"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(cache.get(pid).unwrap().name, "bash");
        child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.starts_with(b"sleep"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "child never exec'd sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Idle: only its existence is checked, the exec is not seen yet.
        assert!(cache
            .revalidate_some(Some(&std::collections::HashSet::new()))
            .is_empty());
        // Used since the last pass: the full check sees the new program.
        assert_eq!(cache.revalidate_some(Some(&[pid].into())), vec![pid]);
        assert_eq!(cache.stats().evicted_exec, 1);
        assert_eq!(cache.get(pid).unwrap().name, "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn start_ticks_parses_comm_with_spaces() {
        let dir = std::env::temp_dir().join(format!("hs-proc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("42")).unwrap();
        let fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        std::fs::write(
            dir.join("42/stat"),
            format!("42 (a b) c) {}\n", fields.join(" ")),
        )
        .unwrap();
        assert_eq!(
            stat_start_and_comm(&dir, 42),
            Some((22, "a b) c".to_string()))
        );
        assert_eq!(stat_start_and_comm(&dir, 43), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }
}
