//! Project tasks: `cargo xtask setup | run | test | lint | bench | image`.
mod bench;
mod bench_agent_cpu;
mod bench_api;
mod bench_config;
mod bench_dns;
mod bench_floor;
mod bench_lifecycle;
mod bench_machine;
mod bench_prometheus;
mod bench_rca;
mod bench_tls;
mod cmd;
mod image;
mod lint;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (idempotent): toolchains, bpf-linker, packages, mounts.
    Setup,
    /// Set up if needed, build, and run the agent with built-in defaults.
    Run {
        /// Arguments passed to `hostscope run` (e.g. `-- --output json`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up if needed and run every test: unit, privileged integration, lint.
    Test,
    /// Formatting and clippy for the host crates and the eBPF crate.
    Lint,
    /// Kernel cost per event and workload slowdown against peer tools, printed.
    Bench(bench::BenchArgs),
    /// Build the OCI image (FROM scratch, buildah): target/image/hostscope-oci.tar.
    Image,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Run { args } => {
            setup::setup()?;
            cmd::run(cmd::cargo().args(["build", "--release", "-p", "hostscope"]))?;
            let bin = cmd::workspace_root().join("target/release/hostscope");
            let mut run = std::process::Command::new(bin);
            run.arg("run").args(args);
            cmd::exec(run)
        }
        Task::Test => {
            setup::setup()?;
            lint::lint()?;
            test::test()
        }
        Task::Lint => lint::lint(),
        Task::Bench(args) => {
            setup::setup()?;
            bench::bench(args)
        }
        Task::Image => image::image(),
    }
}
