//! Builds the eBPF object (`ebpf-probes/probes`) for the BPF target with aya-build and
//! leaves it in OUT_DIR, where `loader` embeds it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf-probes/probes");
    println!("cargo:rerun-if-changed=../ebpf-probes/common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "hostscope-probes",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF probes (run `cargo xtask setup` for the nightly toolchain and bpf-linker)")
}
