//! Mount discovery from `/proc/self/mountinfo` (never hard-coded paths: hybrid hosts put
//! cgroup v2 at `/sys/fs/cgroup/unified`, real nodes at `/sys/fs/cgroup`), and mounting
//! the pseudo filesystems the probes need when they are missing.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

pub const TRACEFS_DEFAULT: &str = "/sys/kernel/tracing";
pub const BPFFS_DEFAULT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] std::io::Error),
    #[error("mounting {fs_type} at {target}: {source}")]
    Mount {
        fs_type: String,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses mountinfo text: `id parent maj:min root mount-point opts [tags] - fstype src sopts`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let fs_type = right.split_whitespace().next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> Result<Vec<Mount>, MountError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::MountInfo)?;
    Ok(parse_mountinfo(&text))
}

/// The first mount point of a filesystem type (e.g. `cgroup2`, `tracefs`, `bpf`).
pub fn find(fs_type: &str) -> Result<Option<PathBuf>, MountError> {
    Ok(mounts()?
        .into_iter()
        .find(|m| m.fs_type == fs_type)
        .map(|m| m.mount_point))
}

pub fn is_mounted_as(path: &Path, fs_type: &str) -> Result<bool, MountError> {
    Ok(mounts()?
        .iter()
        .any(|m| m.fs_type == fs_type && m.mount_point == path))
}

/// tracefs, mounted at its default place if it is nowhere yet.
pub fn ensure_tracefs() -> Result<PathBuf, MountError> {
    if let Some(p) = find("tracefs")? {
        return Ok(p);
    }
    mount("tracefs", Path::new(TRACEFS_DEFAULT))?;
    Ok(PathBuf::from(TRACEFS_DEFAULT))
}

/// A bpffs at `dir` or at one of its ancestors, mounting one at /sys/fs/bpf if missing.
pub fn ensure_bpffs(dir: &Path) -> Result<(), MountError> {
    let all = mounts()?;
    if all
        .iter()
        .any(|m| m.fs_type == "bpf" && dir.starts_with(&m.mount_point))
    {
        return Ok(());
    }
    mount("bpf", Path::new(BPFFS_DEFAULT))
}

fn mount(fs_type: &str, target: &Path) -> Result<(), MountError> {
    let err = |source| MountError::Mount {
        fs_type: fs_type.to_string(),
        target: target.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(target).map_err(err)?;
    let fs = CString::new(fs_type).map_err(|e| err(std::io::Error::other(e)))?;
    let tgt =
        CString::new(target.as_os_str().as_bytes()).map_err(|e| err(std::io::Error::other(e)))?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(fs.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_host_mountinfo() {
        let text = "\
25 30 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 25 0:12 / /sys/kernel/tracing rw,relatime shared:20 - tracefs nodev rw
41 25 0:40 / /mnt/with\\040space rw - bpf bpf rw,mode=700
garbage line without separator
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].fs_type, "cgroup2");
        assert_eq!(m[1].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn finds_real_proc_mounts() {
        // /proc itself is always mounted where tests run.
        assert!(mounts().unwrap().iter().any(|m| m.fs_type == "proc"));
    }
}
