//! cgroup v2 id → path → container / pod, from the node alone.
//!
//! Keeping the cache current: a cgroup v2 id is the kernfs inode number of its directory,
//! and kernfs ids are allocated monotonically and never reused while the system runs. So a
//! cached entry can never become *wrong*, only unused: a new cgroup is simply a cache miss,
//! and a miss is resolved with one `open_by_handle_at(2)` on the cgroup2 mount (cgroupfs
//! exports its ids as file handles, the same way `bpftool cgroup` and systemd do), then a
//! `readlink` of the resulting fd. That costs a few µs per *new* cgroup, needs no tree
//! walk, no tracepoint and no inotify watch per directory (inotify is not recursive, and a
//! node has thousands of cgroups). Removed cgroups are pruned by [`CgroupCache::prune`]
//! (the handle goes stale), called on a timer. When `open_by_handle_at` is not allowed
//! (no CAP_DAC_READ_SEARCH) the fallback is a walk of the tree, rate limited.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The container runtimes recognised from cgroup names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    /// The `container.runtime` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// Kubernetes QoS class, from the kubepods hierarchy (guaranteed pods sit directly under it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "guaranteed",
            QosClass::Burstable => "burstable",
            QosClass::BestEffort => "besteffort",
        }
    }
}

/// What a cgroup path tells. Everything is optional: an unknown layout keeps the path only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Relative to the cgroup2 mount, starting with `/`.
    pub path: String,
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    /// With dashes, as the API writes it (the systemd driver writes `_`).
    pub pod_uid: Option<String>,
    pub qos: Option<QosClass>,
    /// A `.scope` leaf with a container-like id but a runtime prefix we do not know.
    pub unknown_runtime: Option<String>,
}

impl CgroupInfo {
    pub fn is_host(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

fn is_container_id(s: &str) -> bool {
    // Runtimes use 64 hex digits; some tools shorten to 12. Anything else is not an id.
    (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID as the kubelet writes it in cgroup names (`_` or `-` separated).
fn pod_uid(s: &str) -> Option<String> {
    let uid = s.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    ok.then_some(uid)
}

/// `cri-containerd-<id>`, `crio-<id>`, `crio-conmon-<id>`, `docker-<id>`, `libpod-<id>`
/// (systemd driver: with `.scope`; CRI-O with the cgroupfs driver: without).
fn container_leaf(name: &str) -> Option<(Option<Runtime>, String, Option<String>)> {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    let known: [(&str, Runtime); 5] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-conmon-", Runtime::CriO),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in known {
        if let Some(id) = stem.strip_prefix(prefix) {
            return is_container_id(id).then(|| (Some(runtime), id.to_string(), None));
        }
    }
    if name.ends_with(".scope") {
        // `<something>-<id>.scope`: a container of a runtime we do not know; id kept.
        let (prefix, id) = stem.rsplit_once('-')?;
        if is_container_id(id) && id.len() == 64 {
            return Some((None, id.to_string(), Some(prefix.to_string())));
        }
    }
    None
}

/// Parses a cgroup v2 path (relative to the mount) in the layouts nodes use:
///
/// - systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid
///   with _>.slice/cri-containerd-<id>.scope` (guaranteed pods: no QoS slice)
/// - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>` (guaranteed: `/kubepods/pod<uid>/<id>`)
/// - plain containers: `/system.slice/docker-<id>.scope`, `/docker/<id>`
///
/// Nested layouts (kind, a kubelet inside a container) are found by their last
/// `kubepods` segment. Never fails: what is not recognised stays unset.
pub fn parse_path(path: &str) -> CgroupInfo {
    let mut info = CgroupInfo {
        path: path.to_string(),
        ..CgroupInfo::default()
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let kube_start = segments
        .iter()
        .rposition(|s| *s == "kubepods" || *s == "kubepods.slice");
    if let Some(start) = kube_start {
        let mut in_pod = false;
        for seg in segments.iter().skip(start + 1) {
            let name = seg.strip_suffix(".slice").unwrap_or(seg);
            if !in_pod {
                // QoS level: `burstable` or `kubepods-burstable`.
                let qos_name = name.strip_prefix("kubepods-").unwrap_or(name);
                match qos_name {
                    "burstable" => {
                        info.qos = Some(QosClass::Burstable);
                        continue;
                    }
                    "besteffort" => {
                        info.qos = Some(QosClass::BestEffort);
                        continue;
                    }
                    _ => {}
                }
                // Pod level: `pod<uid>` or `kubepods[-<qos>]-pod<uid>`.
                let pod = name
                    .rsplit_once("-pod")
                    .map(|(_, uid)| uid)
                    .or_else(|| name.strip_prefix("pod"));
                match pod.and_then(pod_uid) {
                    Some(uid) => {
                        info.pod_uid = Some(uid);
                        info.qos.get_or_insert(QosClass::Guaranteed);
                        in_pod = true;
                    }
                    None => break,
                }
            } else {
                if let Some((runtime, id, unknown)) = container_leaf(seg) {
                    info.runtime = runtime;
                    info.container_id = Some(id);
                    info.unknown_runtime = unknown;
                } else if is_container_id(seg) {
                    // cgroupfs driver with containerd/docker: the bare id, runtime unsaid.
                    info.container_id = Some(seg.to_string());
                }
                break;
            }
        }
        if info.pod_uid.is_none() {
            info.qos = None;
        }
        return info;
    }
    // Outside Kubernetes: the deepest container-looking segment.
    for (i, seg) in segments.iter().enumerate().rev() {
        if let Some((runtime, id, unknown)) = container_leaf(seg) {
            info.runtime = runtime;
            info.container_id = Some(id);
            info.unknown_runtime = unknown;
            break;
        }
        if i > 0 && segments[i - 1] == "docker" && is_container_id(seg) {
            info.runtime = Some(Runtime::Docker);
            info.container_id = Some(seg.to_string());
            break;
        }
    }
    info
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted")]
    NoCgroup2,
    #[error("finding the cgroup2 mount: {0}")]
    Mounts(#[from] crate::kernel::mounts::MountError),
    #[error("opening the cgroup2 mount {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of the cgroup cache (read by the metadata stats).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CgroupStats {
    pub cached: usize,
    pub misses: u64,
    pub handle_lookups: u64,
    pub walks: u64,
    pub unresolved: u64,
    pub pruned: u64,
    pub unknown_runtimes: u64,
}

struct Inner {
    by_id: HashMap<u64, Arc<CgroupInfo>>,
    last_walk: Option<Instant>,
    /// Set when open_by_handle_at is refused; from then on misses walk the tree.
    handles_refused: bool,
    stats: CgroupStats,
}

/// cgroup id → [`CgroupInfo`], filled on miss.
pub struct CgroupCache {
    mount: PathBuf,
    mount_dir: Option<std::fs::File>,
    min_walk_interval: Duration,
    inner: Mutex<Inner>,
}

impl CgroupCache {
    /// Discovers the cgroup2 mount from /proc/self/mountinfo.
    pub fn discover() -> Result<CgroupCache, CgroupError> {
        let mount = crate::kernel::mounts::find("cgroup2")?.ok_or(CgroupError::NoCgroup2)?;
        Self::at(mount)
    }

    pub fn at(mount: PathBuf) -> Result<CgroupCache, CgroupError> {
        let mount_dir = std::fs::File::open(&mount).map_err(|source| CgroupError::Open {
            path: mount.clone(),
            source,
        })?;
        Ok(CgroupCache {
            mount,
            mount_dir: Some(mount_dir),
            min_walk_interval: Duration::from_secs(1),
            inner: Mutex::new(Inner {
                by_id: HashMap::new(),
                last_walk: None,
                handles_refused: false,
                stats: CgroupStats::default(),
            }),
        })
    }

    /// A cache that resolves nothing (no cgroup2 here); every lookup is a counted miss.
    pub fn unavailable() -> CgroupCache {
        CgroupCache {
            mount: PathBuf::new(),
            mount_dir: None,
            min_walk_interval: Duration::from_secs(1),
            inner: Mutex::new(Inner {
                by_id: HashMap::new(),
                last_walk: None,
                handles_refused: true,
                stats: CgroupStats::default(),
            }),
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cgroup with this id, resolving it on a miss.
    pub fn get(&self, id: u64) -> Option<Arc<CgroupInfo>> {
        {
            let inner = self.lock();
            if let Some(info) = inner.by_id.get(&id) {
                return Some(info.clone());
            }
        }
        let mount_dir = self.mount_dir.as_ref()?;
        let refused = {
            let mut inner = self.lock();
            inner.stats.misses += 1;
            inner.handles_refused
        };
        let path = if refused {
            None
        } else {
            match path_by_handle(mount_dir, &self.mount, id) {
                Ok(p) => {
                    self.lock().stats.handle_lookups += 1;
                    p
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    self.lock().handles_refused = true;
                    None
                }
                Err(_) => None,
            }
        };
        let path = match path {
            Some(p) => Some(p),
            None => self.walk_for(id),
        };
        match path {
            Some(p) => Some(self.insert(id, &p)),
            None => {
                self.lock().stats.unresolved += 1;
                None
            }
        }
    }

    /// The path of a cgroup relative to the mount (e.g. from `/proc/<pid>/cgroup`).
    pub fn get_by_path(&self, id: Option<u64>, rel: &str) -> Arc<CgroupInfo> {
        if let Some(id) = id {
            if let Some(info) = self.lock().by_id.get(&id) {
                return info.clone();
            }
            return self.insert(id, rel);
        }
        Arc::new(parse_path(rel))
    }

    fn insert(&self, id: u64, rel: &str) -> Arc<CgroupInfo> {
        let info = Arc::new(parse_path(rel));
        let mut inner = self.lock();
        if info.unknown_runtime.is_some() {
            inner.stats.unknown_runtimes += 1;
        }
        inner.by_id.insert(id, info.clone());
        info
    }

    /// Fallback when file handles are refused: walks the tree (rate limited) and caches
    /// every cgroup it sees, so one walk answers the misses of a burst of new cgroups.
    fn walk_for(&self, id: u64) -> Option<String> {
        {
            let mut inner = self.lock();
            if inner
                .last_walk
                .is_some_and(|t| t.elapsed() < self.min_walk_interval)
            {
                return None;
            }
            inner.last_walk = Some(Instant::now());
            inner.stats.walks += 1;
        }
        let mut found = None;
        let mut stack = vec![self.mount.clone()];
        let mut seen = Vec::new();
        while let Some(dir) = stack.pop() {
            use std::os::unix::fs::MetadataExt;
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = relative(&self.mount, &dir);
            if meta.ino() == id {
                found = Some(rel.clone());
            }
            seen.push((meta.ino(), rel));
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
        }
        for (ino, rel) in seen {
            if !self.lock().by_id.contains_key(&ino) {
                self.insert(ino, &rel);
            }
        }
        found
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock().by_id.contains_key(&id)
    }

    /// Drops cached cgroups that no longer exist. Returns how many were dropped.
    pub fn prune(&self) -> usize {
        let ids: Vec<(u64, String)> = self
            .lock()
            .by_id
            .iter()
            .map(|(id, info)| (*id, info.path.clone()))
            .collect();
        let gone: Vec<u64> = ids
            .into_iter()
            .filter(|(id, rel)| {
                use std::os::unix::fs::MetadataExt;
                // The directory at that path is gone, or is a newer cgroup of the same name.
                std::fs::metadata(self.mount.join(rel.trim_start_matches('/')))
                    .map(|m| m.ino() != *id)
                    .unwrap_or(true)
            })
            .map(|(id, _)| id)
            .collect();
        let mut inner = self.lock();
        for id in &gone {
            inner.by_id.remove(id);
        }
        inner.stats.pruned += gone.len() as u64;
        gone.len()
    }

    pub fn stats(&self) -> CgroupStats {
        let inner = self.lock();
        let mut s = inner.stats.clone();
        s.cached = inner.by_id.len();
        s
    }
}

fn relative(mount: &Path, dir: &Path) -> String {
    match dir.strip_prefix(mount) {
        Ok(r) if r.as_os_str().is_empty() => "/".to_string(),
        Ok(r) => format!("/{}", r.display()),
        Err(_) => dir.display().to_string(),
    }
}

/// `open_by_handle_at` with a kernfs file handle (type `FILEID_KERNFS` = 0xfe, the 64-bit
/// id as payload), then the path from `/proc/self/fd`. `Ok(None)`: no such cgroup (ESTALE).
fn path_by_handle(
    mount_dir: &std::fs::File,
    mount: &Path,
    id: u64,
) -> std::io::Result<Option<String>> {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: the handle is a valid `struct file_handle` with 8 bytes of payload; the
    // mount fd is open for the call's duration.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_dir.as_raw_fd(),
            &mut handle as *mut KernfsHandle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESTALE) | Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(Some(relative(mount, &link)))
}

/// The cgroup v2 path of a live process (`0::/path` line of `/proc/<pid>/cgroup`).
pub fn path_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_proc_cgroup(&text)
}

pub fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
}

/// The inode (= cgroup id) of a cgroup directory.
pub fn id_of(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2a9d0c1e3b5a7f9d8c6b4a2e0f1d3c5b7a9e8d6c4b2a0f1e3d5c7b9a8e6d4c";
    const UID: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";

    fn systemd(qos: &str, prefix: &str) -> String {
        let uid = UID.replace('-', "_");
        match qos {
            "" => format!("/kubepods.slice/kubepods-pod{uid}.slice/{prefix}{ID}.scope"),
            q => format!(
                "/kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{uid}.slice/{prefix}{ID}.scope"
            ),
        }
    }

    #[test]
    fn systemd_driver_each_runtime_and_qos() {
        for (prefix, runtime) in [
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
            ("docker-", Runtime::Docker),
        ] {
            for (q, qos) in [
                ("", QosClass::Guaranteed),
                ("burstable", QosClass::Burstable),
                ("besteffort", QosClass::BestEffort),
            ] {
                let p = systemd(q, prefix);
                let info = parse_path(&p);
                assert_eq!(info.container_id.as_deref(), Some(ID), "{p}");
                assert_eq!(info.runtime, Some(runtime), "{p}");
                assert_eq!(info.pod_uid.as_deref(), Some(UID), "{p}");
                assert_eq!(info.qos, Some(qos), "{p}");
                assert_eq!(info.path, p);
                assert!(!info.is_host());
            }
        }
    }

    #[test]
    fn cgroupfs_driver() {
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
        let info = parse_path(&p);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(
            info.runtime, None,
            "the cgroupfs driver does not name the runtime"
        );
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.qos, Some(QosClass::BestEffort));
        let g = parse_path(&format!("/kubepods/pod{UID}/crio-{ID}"));
        assert_eq!(g.qos, Some(QosClass::Guaranteed));
        assert_eq!(g.runtime, Some(Runtime::CriO));
        assert_eq!(g.container_id.as_deref(), Some(ID));
        // The pod's own cgroup (pause/infra processes live in a container below it).
        let pod = parse_path(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!(pod.pod_uid.as_deref(), Some(UID));
        assert_eq!(pod.container_id, None);
    }

    #[test]
    fn nested_kubelet_in_a_container() {
        let p = format!(
            "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let info = parse_path(&p);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.runtime, Some(Runtime::Containerd));
        assert_eq!(info.qos, Some(QosClass::BestEffort));
    }

    #[test]
    fn plain_containers_and_host() {
        let d = parse_path(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(d.runtime, Some(Runtime::Docker));
        assert_eq!(d.container_id.as_deref(), Some(ID));
        assert_eq!(d.pod_uid, None);
        let d = parse_path(&format!("/docker/{ID}"));
        assert_eq!(d.runtime, Some(Runtime::Docker));
        for host in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-1.scope",
        ] {
            let h = parse_path(host);
            assert!(h.is_host(), "{host}: {h:?}");
            assert_eq!(h.path, host);
        }
    }

    #[test]
    fn malformed_and_unknown() {
        for bad in [
            "",
            "////",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podNOTAUID.slice/cri-containerd-xyz.scope",
            "/kubepods/burstable/pod/",
            "/kubepods/burstable/pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d5/abc",
            "/kubepods.slice/kubepods-burstable.slice/cri-containerd-0123.scope",
            "/system.slice/cri-containerd-zz.scope",
            "\u{0}/\u{fffd}/kubepods",
        ] {
            let info = parse_path(bad);
            assert_eq!(info.path, bad);
            assert_eq!(info.pod_uid, None, "{bad}");
            assert_eq!(info.container_id, None, "{bad}");
            assert_eq!(info.qos, None, "{bad}");
        }
        // A pod with a container of a runtime we do not know: id kept, runtime unset.
        let p = format!("/kubepods/burstable/pod{UID}/kata-{ID}.scope");
        let info = parse_path(&p);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, None);
        assert_eq!(info.unknown_runtime.as_deref(), Some("kata"));
        // Bad id after a known prefix: nothing invented.
        let info = parse_path(&format!("/kubepods/pod{UID}/cri-containerd-nothex.scope"));
        assert_eq!(info.container_id, None);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn proc_cgroup_line() {
        assert_eq!(
            parse_proc_cgroup("9:name=systemd:/\n0::/a/b\n").as_deref(),
            Some("/a/b")
        );
        assert_eq!(parse_proc_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn real_cgroup_lookup_by_handle_and_prune() {
        // The test process's own cgroup: resolved by id, equal to /proc/self/cgroup.
        let Ok(cache) = CgroupCache::discover() else {
            eprintln!("SKIPPED: no cgroup2 mount");
            return;
        };
        let rel = path_of_pid(std::process::id()).expect("own cgroup");
        let dir = cache.mount().join(rel.trim_start_matches('/'));
        let id = id_of(&dir).unwrap();
        let info = cache.get(id).expect("own cgroup resolves");
        assert_eq!(info.path, rel);
        assert_eq!(cache.prune(), 0);
        assert!(cache.get(u64::MAX - 7).is_none());
        assert!(cache.stats().unresolved >= 1);
    }
}
