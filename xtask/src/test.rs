//! `cargo xtask test`: unit tests, then the privileged integration tests that load the
//! real probes (one at a time: they share the kernel's hooks and measure timings).
use crate::cmd::{cargo, run};

pub fn test() -> anyhow::Result<()> {
    run(cargo().args([
        "test",
        "-p",
        "hostscope",
        "-p",
        "hostscope-common",
        "-p",
        "xtask",
    ]))?;
    // tests/tests/cli.rs drives the binary as users do.
    run(cargo().args(["build", "-p", "hostscope"]))?;
    run(cargo().args(["test", "-p", "hostscope-tests", "--", "--test-threads=1"]))
}
