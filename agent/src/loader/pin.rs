//! The pin directory, checked and claimed before anything is loaded: it must be on a
//! bpffs (`BPF_OBJ_PIN` refuses anything else, and would only say so after seconds of
//! loading), and only one agent may use it (a second one would silently replace the
//! running agent's pinned maps, so `hostscope dump` would read the wrong agent's maps).
//!
//! The claim is an exclusive `flock` on the pin directory itself, kept open for the
//! agent's life:
//! - the kernel drops it when the process dies, however it dies (SIGKILL, OOM), so a
//!   crashed agent never blocks the next start — no stale pid file to judge;
//! - a lock *file* is not possible: bpffs holds only directories and pinned objects;
//! - `flock` records no owner that another process can query directly (`F_GETLK` is for
//!   POSIX locks, OFD locks report pid -1), but `/proc/locks` lists the locker's pid with
//!   the directory's device and inode, which is enough for the message.
//!
//! The directory fd is opened `O_CLOEXEC`, so a child the agent spawns never inherits
//! (and so never prolongs) the claim.

use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use crate::kernel::mounts::{self, MountError, BPFFS_DEFAULT};

/// `BPF_FS_MAGIC` from include/uapi/linux/magic.h (libc does not export it).
pub const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Errors carry their cause in the message and not as a `source`: `main` prints error
/// chains with `{:#}`, which would print a `source` a second time.
#[derive(Debug, thiserror::Error)]
pub enum PinDirError {
    #[error(
        "pin directory {dir}: {checked} is not on a bpffs (BPF maps can only be pinned on \
         one); mount one with `mkdir -p {dir} && mount -t bpf bpf {dir}`, pick a directory \
         under an existing bpffs mount such as {BPFFS_DEFAULT}, or pass --no-pin"
    )]
    NotBpffs { dir: PathBuf, checked: PathBuf },
    #[error("pin directory {dir}: checking its filesystem at {checked}: {error}")]
    Statfs {
        dir: PathBuf,
        checked: PathBuf,
        error: std::io::Error,
    },
    #[error("pin directory {dir}: {error}")]
    Mount { dir: PathBuf, error: MountError },
    #[error("pin directory {dir}: creating it: {error}")]
    Create { dir: PathBuf, error: std::io::Error },
    #[error("pin directory {dir}: locking it: {error}")]
    Lock { dir: PathBuf, error: std::io::Error },
    #[error(
        "pin directory {dir} is in use by another hostscope agent ({}); stop it ({}) or \
         give this one another --pin-dir (or --no-pin)",
        holder_text(.pid),
        stop_text(.pid)
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
}

fn holder_text(pid: &Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid not found in /proc/locks".to_string(),
    }
}

fn stop_text(pid: &Option<u32>) -> String {
    match pid {
        Some(p) => format!("`kill {p}`"),
        None => "find it with `fuser -v` on the directory".to_string(),
    }
}

/// The claim on a pin directory; released when dropped or when the process dies.
#[derive(Debug)]
pub struct PinDirLock {
    dir: PathBuf,
    /// Holds the `flock`; closing it releases the lock.
    _fd: File,
}

impl PinDirLock {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Checks that `dir` is (or would be created) on a bpffs, mounting one at the default
/// location when `dir` is under it and nothing is mounted there yet; creates `dir` and
/// takes the agent's exclusive claim on it. Fails without waiting if another agent
/// holds it.
pub fn claim(dir: &Path) -> Result<PinDirLock, PinDirError> {
    check_bpffs(dir)?;
    std::fs::create_dir_all(dir).map_err(|error| PinDirError::Create {
        dir: dir.to_path_buf(),
        error,
    })?;
    lock(dir)
}

/// bpffs check of `dir`, or of its nearest existing ancestor when it does not exist yet
/// (it will be created there). Keeps the auto-mount of [`mounts::ensure_bpffs`] for the
/// default location only: mounting a bpffs somewhere the user named is their call.
pub fn check_bpffs(dir: &Path) -> Result<(), PinDirError> {
    let checked = nearest_existing(dir);
    if is_bpffs(dir, &checked)? {
        return Ok(());
    }
    if dir.starts_with(BPFFS_DEFAULT) {
        mounts::ensure_bpffs(dir).map_err(|error| PinDirError::Mount {
            dir: dir.to_path_buf(),
            error,
        })?;
        let checked = nearest_existing(dir);
        if is_bpffs(dir, &checked)? {
            return Ok(());
        }
        return Err(PinDirError::NotBpffs {
            dir: dir.to_path_buf(),
            checked,
        });
    }
    Err(PinDirError::NotBpffs {
        dir: dir.to_path_buf(),
        checked,
    })
}

/// `dir` itself or the closest ancestor that exists (`/` at worst).
fn nearest_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn is_bpffs(dir: &Path, checked: &Path) -> Result<bool, PinDirError> {
    let err = |error| PinDirError::Statfs {
        dir: dir.to_path_buf(),
        checked: checked.to_path_buf(),
        error,
    };
    let c =
        CString::new(checked.as_os_str().as_bytes()).map_err(|e| err(std::io::Error::other(e)))?;
    // SAFETY: statfs fills the zeroed struct; the path is a valid NUL-terminated string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // f_type's width differs between architectures; the magic fits in 32 bits.
    Ok(st.f_type as u32 == BPF_FS_MAGIC)
}

fn lock(dir: &Path) -> Result<PinDirLock, PinDirError> {
    let lock_err = |error| PinDirError::Lock {
        dir: dir.to_path_buf(),
        error,
    };
    // std opens with O_CLOEXEC; a directory opens read-only.
    let fd = File::open(dir).map_err(lock_err)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let pid = fd
                .metadata()
                .ok()
                .and_then(|m| std::fs::read_to_string("/proc/locks").ok().map(|t| (m, t)))
                .and_then(|(m, text)| flock_holder(&text, m.dev(), m.ino()));
            return Err(PinDirError::InUse {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        return Err(lock_err(e));
    }
    Ok(PinDirLock {
        dir: dir.to_path_buf(),
        _fd: fd,
    })
}

/// The pid holding a `flock` on the file `(dev, ino)`, from `/proc/locks` text:
/// `1: FLOCK  ADVISORY  WRITE 4242 00:28:33306 0 EOF` (device as hex `major:minor`).
/// Waiters (`1: -> FLOCK …`) are skipped.
pub fn flock_holder(proc_locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    proc_locks.lines().find_map(|line| {
        let mut f = line.split_whitespace().skip(1);
        if f.next()? != "FLOCK" {
            return None;
        }
        let pid = f.nth(2)?;
        (f.next()? == want).then(|| pid.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_flock_holder() {
        let text = "\
1: POSIX  ADVISORY  WRITE 100 00:28:33306 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 00:28:33306 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4343 00:28:33306 0 EOF
3: FLOCK  ADVISORY  WRITE 77 fe:00:33306 0 EOF
";
        let dev = libc::makedev(0, 0x28);
        assert_eq!(flock_holder(text, dev, 33306), Some(4242));
        assert_eq!(flock_holder(text, libc::makedev(0xfe, 0), 33306), Some(77));
        assert_eq!(flock_holder(text, dev, 1), None);
    }

    #[test]
    fn tmp_is_not_a_bpffs() {
        let dir = std::env::temp_dir().join(format!("hs-pin-{}/x/y", std::process::id()));
        let e = check_bpffs(&dir).unwrap_err();
        assert!(matches!(e, PinDirError::NotBpffs { .. }), "{e}");
        assert!(e.to_string().contains("mount -t bpf bpf"), "{e}");
    }

    #[test]
    fn second_claim_names_the_holder() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED second_claim_names_the_holder: needs root for bpffs");
            return;
        }
        let dir = PathBuf::from(format!(
            "{BPFFS_DEFAULT}/hs-lock-unit-{}",
            std::process::id()
        ));
        let first = claim(&dir).unwrap();
        // A second open file description of the same directory conflicts, even in
        // this process: flock locks belong to open files.
        let e = claim(&dir).unwrap_err();
        assert!(
            matches!(e, PinDirError::InUse { pid: Some(p), .. } if p == std::process::id()),
            "{e}"
        );
        drop(first);
        let again = claim(&dir).unwrap();
        assert_eq!(again.dir(), dir.as_path());
        drop(again);
        let _ = std::fs::remove_dir(&dir);
    }
}
