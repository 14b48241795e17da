//! `cargo xtask bench`: figures printed, never asserted.
#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn bench(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
