//! `cargo xtask lint`: rustfmt and clippy (warnings are errors) for the host crates and,
//! separately, for the eBPF crate on its own target.
use crate::cmd::{cargo, run, workspace_root};

pub fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run(std::process::Command::new("cargo")
        .current_dir(workspace_root().join("ebpf-probes/probes"))
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
}
