//! `cargo xtask setup`: makes a fresh machine of our kind able to build, test and run
//! hostscope. Idempotent; every step says what it checks and what it does.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::cmd::{self, output, run};

/// Debian packages the tests and benchmarks use: fault injection (nft, ip), TLS peers
/// (openssl), DNS servers and clients (dnsmasq, dig), the peer tools we measure against (libbpf-tools, bpftrace, bpftool), and
/// the Prometheus server the endpoint's tests scrape with.
const PACKAGES: &[&str] = &[
    "nftables",
    "iproute2",
    "openssl",
    "bpftool",
    "bpftrace",
    "libbpf-tools",
    "procps",
    "curl",
    // The OTLP test receiver's virtualenv (see otlp_receiver).
    "python3-venv",
    // The Prometheus tests' server and `promtool check metrics` (one package ships both).
    "prometheus",
    // `ctr images import` of the image, with a private containerd the container test starts.
    "containerd",
    // The DNS tests' servers: the dnsmasq binary alone (`dnsmasq-base` ships no service,
    // so installing it starts no system resolver), and their client `dig`.
    "dnsmasq-base",
    "bind9-dnsutils",
];

/// The OTLP receiver the export tests run against: the OpenTelemetry project's
/// generated protobuf/gRPC package and grpcio, pinned, in a virtualenv under target/.
const OTLP_RECEIVER_PACKAGES: &[&str] = &[
    "opentelemetry-proto==1.45.2",
    "grpcio==1.85.3",
    // Decodes OTLP/HTTP bodies sent with Content-Encoding: zstd.
    "zstandard==0.23.0",
];

/// bpf-linker release known to build against the image's nightly LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> anyhow::Result<()> {
    step("privileges");
    if !cmd::is_root() {
        bail!("setup must run as root: it installs packages, mounts tracefs/bpffs and loads eBPF");
    }
    step("kernel BTF");
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "/sys/kernel/btf/vmlinux is missing: this kernel was built without \
             CONFIG_DEBUG_INFO_BTF, which hostscope needs to read socket fields"
        );
    }
    packages()?;
    nightly()?;
    bpf_linker()?;
    cargo_fuzz()?;
    otlp_receiver()?;
    mounts()?;
    eprintln!("setup: done");
    Ok(())
}

/// Where the export tests find the receiver's Python (tests/src/otlp.rs says the same).
pub fn otlp_venv() -> PathBuf {
    cmd::workspace_root().join("target/otlp-venv")
}

fn otlp_receiver() -> anyhow::Result<()> {
    step("OTLP test receiver (Python opentelemetry-proto + grpcio)");
    let venv = otlp_venv();
    let python = venv.join("bin/python3");
    // zstandard is in the check so that a venv made before it was added is topped up.
    let check =
        "import grpc, zstandard, opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc";
    if output(Command::new(&python).args(["-c", check])).is_some() {
        return Ok(());
    }
    eprintln!(
        "setup: creating {} and installing {}",
        venv.display(),
        OTLP_RECEIVER_PACKAGES.join(" ")
    );
    // The system Python, not a user's pyenv shim: the same interpreter on every machine.
    run(Command::new("/usr/bin/python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv))
    .context("creating the receiver's virtualenv (python3-venv)")?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(OTLP_RECEIVER_PACKAGES))
    .context("pip install of the OTLP receiver's packages failed (is PyPI reachable?)")?;
    if output(Command::new(&python).args(["-c", check])).is_none() {
        bail!(
            "{} cannot import grpc and opentelemetry.proto after install",
            python.display()
        );
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("setup: checking {what}");
}

pub fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn packages() -> anyhow::Result<()> {
    step("Debian packages");
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    install(&missing)
}

/// `apt-get install` of `missing` (nothing when it is empty).
pub fn install(missing: &[&str]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed (is a Debian mirror reachable?)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("installing Debian packages failed")
}

/// `rustc +nightly -vV`, or None when the toolchain is absent.
fn nightly_version() -> Option<String> {
    output(Command::new("rustc").args(["+nightly", "-vV"]))
}

fn nightly() -> anyhow::Result<()> {
    step("nightly toolchain with rust-src (eBPF build)");
    if nightly_version().is_none() {
        eprintln!("setup: installing the nightly toolchain");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("could not install the nightly toolchain")?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    for comp in ["rust-src", "clippy", "rustfmt"] {
        if !components.lines().any(|l| l.starts_with(comp)) {
            run(Command::new("rustup").args(["component", "add", comp, "--toolchain", "nightly"]))
                .with_context(|| format!("could not add {comp} to the nightly toolchain"))?;
        }
    }
    Ok(())
}

/// The LLVM major version and commit of the nightly, from `rustc +nightly -vV`.
fn nightly_llvm() -> anyhow::Result<(String, String)> {
    let v = nightly_version().context("nightly toolchain missing after install")?;
    let field = |key: &str| {
        v.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|s| s.trim().to_string())
    };
    let llvm = field("LLVM version:").context("rustc +nightly -vV shows no LLVM version")?;
    let major = llvm.split('.').next().unwrap_or("").to_string();
    let commit = field("commit-hash:").unwrap_or_default();
    Ok((major, commit))
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or("/root".into())).join(".cargo")
        });
    home.join("bin")
}

/// bpf-linker must link against the nightly's own libLLVM (no matching LLVM dev package
/// exists for this Debian). A stamp records which nightly it was built for.
fn bpf_linker() -> anyhow::Result<()> {
    step("bpf-linker built against the nightly's LLVM");
    let (major, commit) = nightly_llvm()?;
    let stamp = cargo_bin().join(".bpf-linker-nightly");
    let linker = cargo_bin().join("bpf-linker");
    let works = output(
        Command::new(&linker)
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH"),
    )
    .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    let same = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == commit);
    if works && same {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot failed")?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .with_context(|| format!("no libLLVM shared library in {}", libdir.display()))?;
    let prefix = PathBuf::from("/opt/rustllvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major}, ~1-2 min)",
        libllvm.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", libdir.display()),
        ))
    .context("building bpf-linker failed")?;
    if output(
        Command::new(&linker)
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH"),
    )
    .is_none()
    {
        bail!("bpf-linker was built but does not run outside rustup (libLLVM not found)");
    }
    std::fs::write(&stamp, commit)?;
    Ok(())
}

/// cargo-fuzz runs the TLS parser's fuzz target in `cargo xtask test`.
fn cargo_fuzz() -> anyhow::Result<()> {
    step("cargo-fuzz");
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz failed")
}

fn fs_mounted(fs_type: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|t| {
        t.lines().any(|l| {
            l.split_once(" - ")
                .and_then(|(_, r)| r.split_whitespace().next())
                == Some(fs_type)
        })
    })
}

fn mounts() -> anyhow::Result<()> {
    step("tracefs and bpffs mounts");
    for (fs, target) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        if !fs_mounted(fs) {
            run(Command::new("mount").args(["-t", fs, fs, target]))
                .with_context(|| format!("mounting {fs} at {target}"))?;
        }
    }
    Ok(())
}
