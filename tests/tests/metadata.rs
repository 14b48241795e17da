//! Metadata against the real kernel: real cgroup v2 directories in the layouts nodes use
//! (systemd and cgroupfs drivers, containerd / CRI-O / Docker names, each QoS class), a
//! real process moved into each making a real (refused) TCP connect, and the identity
//! the agent's resolver gives the record the probes emitted.

use std::{path::Path, time::Duration};

use hostscope::{
    events::{tcp::TcpRecord, Record},
    loader::LoaderConfig,
    metadata::{AttrValue, Identity, MetadataOptions},
    output, AgentConfig,
};
use hostscope_tests::{metadata::*, *};

const WAIT: Duration = Duration::from_secs(5);

fn harness(kubelet_root: Option<&Path>) -> Harness {
    Harness::start_with(AgentConfig {
        loader: LoaderConfig {
            pin_dir: None,
            ..LoaderConfig::default()
        },
        metadata: MetadataOptions {
            kubelet_log_root: kubelet_root
                .map(Path::to_path_buf)
                .unwrap_or_else(|| "/nonexistent-kubelet-root".into()),
            node_name: Some("test-node".into()),
            ..MetadataOptions::default()
        },
        ..AgentConfig::default()
    })
}

/// Moves a connector into `dir`, makes it connect, and returns the record of that
/// refused connect and the identity the agent's resolver gives it.
fn connect_from(h: &Harness, dir: &Path) -> (TcpRecord, std::sync::Arc<Identity>) {
    let mut c = Connector::spawn();
    c.move_to(dir);
    c.connect();
    let pid = c.pid();
    let port = c.port;
    let rec = h.wait_tcp(1, WAIT, |r| {
        r.pid == Some(pid) && r.remote.port() == port && r.failure.is_some()
    })[0]
        .clone();
    // Resolved while the process is alive, as a sink does right after the record.
    let id = h
        .agent()
        .resolver()
        .identify(Record::Tcp(rec.clone()).subject());
    (rec, id)
}

fn s<'a>(id: &'a Identity, key: &str) -> Option<&'a str> {
    id.get_str(key)
}

/// Checks what every container/pod identity must carry for a record made by `pid` in `dir`.
fn check_common(tree: &CgroupTree, dir: &Path, rec: &TcpRecord, id: &Identity) {
    let ino = hostscope::metadata::cgroup::id_of(dir).unwrap();
    assert_eq!(
        rec.cgroup_id,
        Some(ino),
        "the probe saw the process in the new cgroup"
    );
    assert_eq!(s(id, "hostscope.cgroup.path"), Some(tree.rel(dir).as_str()));
    assert_eq!(
        id.get("process.pid"),
        Some(&AttrValue::Int(i64::from(rec.pid.unwrap())))
    );
    assert_eq!(s(id, "process.executable.name"), Some("bash"));
    let cmd = s(id, "process.command_line").expect("command line");
    assert!(
        cmd.contains("--password=***") && !cmd.contains("hunter2"),
        "{cmd}"
    );
    // SAFETY: getpid has no preconditions.
    assert_eq!(
        id.get("process.parent_pid"),
        Some(&AttrValue::Int(i64::from(unsafe { libc::getpid() })))
    );
}

#[test]
fn systemd_driver_containerd_crio_docker_each_qos() {
    if !privileged("systemd_driver_containerd_crio_docker_each_qos") {
        return;
    }
    let h = harness(None);
    let tree = CgroupTree::new();
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
    ] {
        for qos in ["guaranteed", "burstable", "besteffort"] {
            let uid = pod_uid();
            let cid = container_id();
            let u = uid.replace('-', "_");
            let rel = match qos {
                "guaranteed" => {
                    format!("kubepods.slice/kubepods-pod{u}.slice/{prefix}{cid}.scope")
                }
                q => format!(
                    "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice/{prefix}{cid}.scope"
                ),
            };
            let dir = tree.make(&rel);
            let (rec, id) = connect_from(&h, &dir);
            check_common(&tree, &dir, &rec, &id);
            assert_eq!(s(&id, "container.id"), Some(cid.as_str()), "{rel}");
            assert_eq!(s(&id, "container.runtime"), Some(runtime), "{rel}");
            assert_eq!(s(&id, "k8s.pod.uid"), Some(uid.as_str()), "{rel}");
            assert_eq!(s(&id, "k8s.pod.qos_class"), Some(qos), "{rel}");
            assert_eq!(s(&id, "hostscope.scope"), Some("pod"));
        }
    }
}

#[test]
fn cgroupfs_driver_each_qos() {
    if !privileged("cgroupfs_driver_each_qos") {
        return;
    }
    let h = harness(None);
    let tree = CgroupTree::new();
    for (qos, level) in [
        ("guaranteed", ""),
        ("burstable", "burstable/"),
        ("besteffort", "besteffort/"),
    ] {
        // containerd/docker write the bare id; CRI-O prefixes `crio-` under cgroupfs too.
        for (leaf_prefix, runtime) in [("", None), ("crio-", Some("cri-o"))] {
            let uid = pod_uid();
            let cid = container_id();
            let rel = format!("kubepods/{level}pod{uid}/{leaf_prefix}{cid}");
            let dir = tree.make(&rel);
            let (rec, id) = connect_from(&h, &dir);
            check_common(&tree, &dir, &rec, &id);
            assert_eq!(s(&id, "container.id"), Some(cid.as_str()), "{rel}");
            assert_eq!(s(&id, "container.runtime"), runtime, "{rel}");
            assert_eq!(s(&id, "k8s.pod.uid"), Some(uid.as_str()), "{rel}");
            assert_eq!(s(&id, "k8s.pod.qos_class"), Some(qos), "{rel}");
        }
    }
}

#[test]
fn plain_container_host_and_unknown_layouts() {
    if !privileged("plain_container_host_and_unknown_layouts") {
        return;
    }
    let h = harness(None);
    let tree = CgroupTree::new();
    let cid = container_id();
    let dir = tree.make(&format!("system.slice/docker-{cid}.scope"));
    let (rec, id) = connect_from(&h, &dir);
    check_common(&tree, &dir, &rec, &id);
    assert_eq!(s(&id, "container.id"), Some(cid.as_str()));
    assert_eq!(s(&id, "container.runtime"), Some("docker"));
    assert_eq!(s(&id, "k8s.pod.uid"), None);
    assert_eq!(s(&id, "hostscope.scope"), Some("container"));
    assert_eq!(id.label(), Some(format!("container {}", &cid[..12])));

    // A host service: labelled host, not blank.
    let dir = tree.make("system.slice/hostscope-test.service");
    let (rec, id) = connect_from(&h, &dir);
    check_common(&tree, &dir, &rec, &id);
    assert_eq!(s(&id, "hostscope.scope"), Some("host"));
    assert_eq!(s(&id, "container.id"), None);
    assert!(s(&id, "host.name").is_some_and(|n| !n.is_empty()));
    assert_eq!(id.label(), None);

    // Malformed / unknown: path kept, nothing invented, no panic.
    for rel in [
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podNOT_A_UID.slice/cri-containerd-zz.scope".to_string(),
        format!("kubepods/burstable/pod{}/kata-{}.scope", pod_uid(), container_id()),
        "weird name with spaces/and:colons".to_string(),
    ] {
        let dir = tree.make(&rel);
        let (rec, id) = connect_from(&h, &dir);
        check_common(&tree, &dir, &rec, &id);
        if rel.contains("kata-") {
            assert!(s(&id, "container.id").is_some_and(|c| rel.contains(c)), "{rel}");
            assert_eq!(s(&id, "container.runtime"), None, "{rel}");
        } else {
            assert_eq!(s(&id, "container.id"), None, "{rel}");
            assert_eq!(s(&id, "k8s.pod.uid"), None, "{rel}");
        }
    }
    let stats = h.agent().resolver().stats();
    assert!(stats.cgroups.unknown_runtimes >= 1, "{stats:?}");
}

#[test]
fn kubelet_names_in_identity_text_and_json() {
    if !privileged("kubelet_names_in_identity_text_and_json") {
        return;
    }
    let kubelet = KubeletTree::new();
    let h = harness(Some(&kubelet.root));
    let tree = CgroupTree::new();
    let uid = pod_uid();
    let cid = container_id();
    let other = container_id();
    kubelet.add_pod(
        "shop",
        "checkout-7d9f",
        &uid,
        &[("api", &cid), ("sidecar", &other)],
    );
    let dir = tree.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    ));
    let (rec, id) = connect_from(&h, &dir);
    check_common(&tree, &dir, &rec, &id);
    assert_eq!(s(&id, "k8s.pod.name"), Some("checkout-7d9f"));
    assert_eq!(s(&id, "k8s.namespace.name"), Some("shop"));
    assert_eq!(s(&id, "k8s.container.name"), Some("api"));
    assert_eq!(s(&id, "k8s.node.name"), Some("test-node"));

    // What `hostscope run` prints for that record.
    let record = Record::Tcp(rec);
    let resolver = h.agent().resolver();
    assert_eq!(
        output::text_label(&resolver, &record).as_deref(),
        Some("pod shop/checkout-7d9f api")
    );
    let json = serde_json::to_value(output::with_identity(&resolver, &record)).unwrap();
    assert_eq!(json["type"], "tcp");
    assert_eq!(json["identity"]["k8s.pod.name"], "checkout-7d9f");
    assert_eq!(json["identity"]["container.id"], cid.as_str());
    assert_eq!(json["identity"]["k8s.pod.uid"], uid.as_str());

    // A pod whose kubelet directory appears after its first record: labelled once it is
    // written (the incomplete identity is not kept for good).
    let uid2 = pod_uid();
    let cid2 = container_id();
    let dir2 = tree.make(&format!("kubepods/besteffort/pod{uid2}/{cid2}"));
    let (_, early) = connect_from(&h, &dir2);
    assert_eq!(s(&early, "k8s.pod.uid"), Some(uid2.as_str()));
    assert_eq!(s(&early, "k8s.pod.name"), None);
    kubelet.add_pod("batch", "report", &uid2, &[("main", &cid2)]);
    std::thread::sleep(Duration::from_millis(600));
    let (_, late) = connect_from(&h, &dir2);
    assert_eq!(s(&late, "k8s.pod.name"), Some("report"));
    assert_eq!(s(&late, "k8s.container.name"), Some("main"));
}

#[test]
fn removed_cgroups_and_exited_processes_are_evicted() {
    if !privileged("removed_cgroups_and_exited_processes_are_evicted") {
        return;
    }
    let h = harness(None);
    let resolver = h.agent().resolver();
    let pid;
    {
        let tree = CgroupTree::new();
        let cid = container_id();
        let dir = tree.make(&format!("docker/{cid}"));
        let (rec, id) = connect_from(&h, &dir);
        assert_eq!(s(&id, "container.id"), Some(cid.as_str()));
        pid = rec.pid.unwrap();
        let before = resolver.stats();
        assert!(before.cgroups.cached >= 1 && before.processes.cached >= 1);
        // Connector and tree dropped here: process killed, cgroups removed.
    }
    resolver.maintain();
    let after = resolver.stats();
    assert!(after.cgroups.pruned >= 1, "{after:?}");
    assert!(after.processes.evicted_exited >= 1, "{after:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "connector exited"
    );
}
