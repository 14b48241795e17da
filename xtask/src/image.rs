//! `cargo xtask image`: an OCI image of hostscope built `FROM scratch` with Debian's
//! `buildah`: no registry, no daemon, no base image. The image holds the release binary
//! stripped of its debug info, the shared libraries `ldd` names, and the CA bundle (for
//! an OTLP endpoint over TLS). Writes `target/image/hostscope-oci.tar`.
//!
//! The release profile keeps its line tables (backtraces and `perf` on a dev machine);
//! only the copy in the image is stripped, so building the image costs no second build.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::cmd::{self, output, run};

/// Debian packages the image build and the container test use.
pub const PACKAGES: &[&str] = &["buildah", "skopeo", "umoci", "runc", "binutils"];

/// Where the binary lives in the image (the entrypoint).
pub const BINARY_IN_IMAGE: &str = "/usr/local/bin/hostscope";
/// The CA bundle in the image, at the path rustls-native-certs and OpenSSL read.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Empty directories the manifest mounts over (a read-only root cannot create them).
const MOUNT_POINTS: &[&str] = &["etc/hostscope", "run/hostscope", "var/lib/hostscope", "tmp"];

/// What `cargo xtask image` made.
pub struct Image {
    pub archive: PathBuf,
    pub tag: String,
    /// The archive (gzip-compressed layer).
    pub bytes: u64,
    /// The files of the image's root, unpacked.
    pub unpacked_bytes: u64,
}

pub fn image() -> anyhow::Result<()> {
    let img = build()?;
    println!("image:   {}", img.archive.display());
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "size:    {:.1} MiB archive ({} bytes, gzip layer), {:.1} MiB unpacked",
        mib(img.bytes),
        img.bytes,
        mib(img.unpacked_bytes)
    );
    println!("tag:     hostscope:{}", img.tag);
    println!(
        "push:    skopeo copy oci-archive:{} docker://REGISTRY/hostscope:{}",
        img.archive.display(),
        img.tag
    );
    Ok(())
}

/// Builds the release binary and the image; returns the archive's path, tag and size.
pub fn build() -> anyhow::Result<Image> {
    packages()?;
    run(cmd::cargo().args(["build", "--release", "-p", "hostscope"]))?;
    let root = cmd::workspace_root();
    let out = root.join("target/image");
    let rootfs = out.join("rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("removing the old {}", rootfs.display()))?;
    }
    stage_rootfs(&root.join("target/release/hostscope"), &rootfs)?;

    let version = env!("CARGO_PKG_VERSION");
    let git = |args: &[&str]| output(Command::new("git").current_dir(&root).args(args));
    let commit = git(&["rev-parse", "HEAD"])
        .map(|s| s.trim().to_string())
        .context("git rev-parse HEAD failed: the image is tagged with the commit")?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.trim().is_empty());
    let short = &commit[..commit.len().min(12)];
    let tag = format!("{version}-{short}{}", if dirty { "-dirty" } else { "" });
    // The commit's time, not the build's: two builds of one commit carry the same label.
    let created = git(&["show", "-s", "--format=%cI", "HEAD"])
        .map(|s| s.trim().to_string())
        .unwrap_or_default();

    let archive = out.join("hostscope-oci.tar");
    let _ = std::fs::remove_file(&archive);
    buildah(&rootfs, &archive, &tag, &commit, &created)?;
    let bytes = std::fs::metadata(&archive)
        .with_context(|| format!("{} was not written", archive.display()))?
        .len();
    // The archive must be one that the standard tools read.
    run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))
        .stdout(std::process::Stdio::null()))
    .context("skopeo cannot read the archive buildah wrote")?;
    Ok(Image {
        archive,
        tag,
        bytes,
        unpacked_bytes: tree_bytes(&rootfs),
    })
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !crate::setup::installed(p))
        .collect();
    crate::setup::install(&missing)
}

/// The image's root: the stripped binary, its libraries at the paths the dynamic loader
/// looks for them, the CA bundle, and the mount points.
fn stage_rootfs(binary: &Path, rootfs: &Path) -> anyhow::Result<()> {
    let bin = rootfs.join(BINARY_IN_IMAGE.trim_start_matches('/'));
    create_parent(&bin)?;
    run(Command::new("strip")
        .args(["--strip-all", "-o"])
        .arg(&bin)
        .arg(binary))
    .context("stripping the release binary (binutils)")?;
    for lib in shared_libraries(binary)? {
        copy_into(&lib, rootfs)?;
    }
    copy_into(Path::new(CA_BUNDLE), rootfs)
        .context("the CA bundle (Debian's ca-certificates) is missing")?;
    for dir in MOUNT_POINTS {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    Ok(())
}

/// Every file `ldd` resolves for `binary`, the dynamic loader included.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)";
        // the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => bail!(
                "ldd: a library of {} is not found: {line}",
                binary.display()
            ),
            _ => {}
        }
    }
    if libs.is_empty() {
        bail!("ldd named no library for {}", binary.display());
    }
    Ok(libs)
}

/// Copies `file` to its real path under `rootfs`, and recreates the links on the way to
/// it (on a merged-/usr host `/lib` links to `usr/lib`, `/lib64/ld-linux…` to `/lib/…`)
/// so that every path the binary and the loader use resolves in the image too.
fn copy_into(file: &Path, rootfs: &Path) -> anyhow::Result<()> {
    let real =
        std::fs::canonicalize(file).with_context(|| format!("resolving {}", file.display()))?;
    let real_dest = rootfs.join(real.strip_prefix("/")?);
    create_parent(&real_dest)?;
    std::fs::copy(&real, &real_dest).with_context(|| format!("copying {}", real.display()))?;
    let mut host = PathBuf::from("/");
    let mut dest = rootfs.to_path_buf();
    for comp in file.strip_prefix("/")?.components() {
        host.push(comp);
        dest.push(comp);
        let meta = std::fs::symlink_metadata(&host)
            .with_context(|| format!("reading {}", host.display()))?;
        if meta.file_type().is_symlink() {
            if dest.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(std::fs::read_link(&host)?, &dest)
                    .with_context(|| format!("linking {}", dest.display()))?;
            }
            if meta_follow_is_dir(&host) {
                // The link's target must exist in the image for paths through it.
                std::fs::create_dir_all(
                    rootfs.join(std::fs::canonicalize(&host)?.strip_prefix("/")?),
                )?;
            }
        } else if meta.is_dir() {
            std::fs::create_dir_all(&dest)?;
        }
    }
    Ok(())
}

/// Bytes of the regular files under `dir` (links not followed).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn meta_follow_is_dir(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_dir())
}

fn create_parent(p: &Path) -> anyhow::Result<()> {
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(())
}

/// `buildah from scratch`, the root copied in, configured, committed straight to an OCI
/// archive. vfs storage: works on any filesystem, and the image is one small layer.
fn buildah(
    rootfs: &Path,
    archive: &Path,
    tag: &str,
    commit: &str,
    created: &str,
) -> anyhow::Result<()> {
    let b = || {
        let mut c = Command::new("buildah");
        c.args(["--storage-driver", "vfs"]);
        c
    };
    let name = format!("hostscope-image-{}", std::process::id());
    run(b().args(["from", "--name", &name, "scratch"]))?;
    let result = (|| {
        run(b()
            .args(["copy", &name])
            .arg(format!("{}/", rootfs.display()))
            .arg("/"))?;
        let labels = [
            ("org.opencontainers.image.title", "hostscope".to_string()),
            (
                "org.opencontainers.image.description",
                "eBPF host telemetry agent: TCP, TLS and syscalls, exported over OTLP".into(),
            ),
            ("org.opencontainers.image.version", tag.to_string()),
            ("org.opencontainers.image.revision", commit.to_string()),
            (
                "org.opencontainers.image.source",
                source_url().unwrap_or_else(|| "https://github.com/hostscope/hostscope".into()),
            ),
            ("org.opencontainers.image.created", created.to_string()),
            (
                "org.opencontainers.image.licenses",
                env!("CARGO_PKG_LICENSE").to_string(),
            ),
        ];
        let mut config = b();
        config.arg("config");
        for (k, v) in &labels {
            config.arg("--label").arg(format!("{k}={v}"));
        }
        // Exec form: the binary is PID 1 of the container, no shell in the image. The
        // default command runs on built-in defaults; the DaemonSet passes
        // `run --config /etc/hostscope/config.yaml`.
        config
            .arg("--entrypoint")
            .arg(format!(r#"["{BINARY_IN_IMAGE}"]"#))
            .args(["--cmd", "run"])
            .args(["--stop-signal", "SIGTERM"])
            .args(["--workingdir", "/"])
            .arg(&name);
        run(&mut config)?;
        run(b()
            .args([
                "commit",
                "--rm",
                "--format",
                "oci",
                "--disable-compression=false",
                &name,
            ])
            .arg(format!("oci-archive:{}:hostscope:{tag}", archive.display())))
    })();
    if result.is_err() {
        let _ = b().args(["rm", &name]).status();
    }
    result
}

/// The repository's URL from `git remote get-url origin`, if it has one over https.
fn source_url() -> Option<String> {
    let url = output(
        Command::new("git")
            .current_dir(cmd::workspace_root())
            .args(["remote", "get-url", "origin"]),
    )?;
    let url = url.trim();
    url.starts_with("https://").then(|| url.to_string())
}
