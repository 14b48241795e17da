//! Builds the eBPF object (`ebpf-probes/probes`) for the BPF target with aya-build and
//! leaves it in OUT_DIR, where `loader` embeds it; generates the local API's gRPC code
//! from `proto/` (parsed by protox: no protoc needed).
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    api_proto()?;
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

fn api_proto() -> anyhow::Result<()> {
    const PROTO: &str = "proto/hostscope/v1/api.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"]).context("parsing the API's .proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(fds)
        .context("generating the API's gRPC code")
}
