//! `cargo xtask test`: unit tests, then the privileged integration tests that load the
//! real probes (one at a time: they share the kernel's hooks and measure timings).
//! Ends with one `N passed, N failed` line over every test run.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::cmd::{cargo, run};

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds `test result: ok. 9 passed; 0 failed; 1 ignored; …`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs a `cargo test` invocation, echoing its output and counting its results.
fn cargo_test(args: &[&str], totals: &mut Totals) -> anyhow::Result<bool> {
    let mut c: Command = cargo();
    c.arg("test").args(args).stdout(Stdio::piped());
    eprintln!("+ cargo test {}", args.join(" "));
    let mut child = c.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add_line(&line);
    }
    Ok(child.wait()?.success())
}

pub fn test() -> anyhow::Result<()> {
    let mut totals = Totals::default();
    let unit_ok = cargo_test(
        &["-p", "hostscope", "-p", "hostscope-common", "-p", "xtask"],
        &mut totals,
    )?;
    // tests/tests/cli.rs drives the binary as users do.
    run(cargo().args(["build", "-p", "hostscope"]))?;
    // tests/tests/container.rs runs the image under runc: built once here (the release
    // build, then ~5 s of buildah).
    let image = crate::image::build()?;
    std::env::set_var("HOSTSCOPE_IMAGE", &image.archive);
    let integration_ok = cargo_test(
        &[
            "-p",
            "hostscope-tests",
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ],
        &mut totals,
    )?;
    // The wire parsers must survive arbitrary bytes: a bounded fuzzing run of each.
    for target in ["tls_wire", "dns_wire"] {
        let fuzz_ok = run(std::process::Command::new("cargo")
            .current_dir(crate::cmd::workspace_root().join("fuzz"))
            .args([
                "+nightly",
                "fuzz",
                "run",
                target,
                "--",
                "-max_total_time=20",
            ]))
        .is_ok();
        if fuzz_ok {
            totals.passed += 1;
        } else {
            totals.failed += 1;
        }
    }
    println!(
        "{} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !(unit_ok && integration_ok) || totals.failed > 0 {
        bail!("tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_result_lines() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 9 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        t.add_line(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 9 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (11, 3, 1));
    }
}
