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

/// A process that exited before its records were resolved leaves an identity with no
/// process entry behind; the eviction pass drops it too (10,000 short-lived processes
/// used to leave 20,000 identities cached for good).
#[test]
fn identities_of_processes_gone_before_resolution_are_evicted() {
    let resolver = hostscope::metadata::Resolver::node_local();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let live = std::process::id();
    let gone = resolver.identify(hostscope::metadata::Subject {
        pid: Some(pid),
        cgroup_id: None,
    });
    assert_eq!(gone.get("process.command_line"), None, "{gone:?}");
    resolver.identify(hostscope::metadata::Subject {
        pid: Some(live),
        cgroup_id: None,
    });
    assert_eq!(resolver.stats().identities_cached, 2);
    resolver.maintain();
    assert_eq!(
        resolver.stats().identities_cached,
        1,
        "only the live one stays"
    );
}

/// The Kubernetes side against a local API server speaking the real list + watch wire
/// format: a list with a resourceVersion, chunked watch events, a dropped connection,
/// garbage JSON, a `410 Gone` watch event (relist), ending with the right labels and
/// owner on the identity. Needs no privileges (the cgroup tree is a plain directory).
mod api {
    use std::{
        collections::HashMap,
        net::IpAddr,
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use hostscope::metadata::{
        kube::{client_for_url, Backoff},
        CgroupCache, MetadataOptions, Resolver, Subject,
    };
    use serde_json::{json, Value};
    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        net::{TcpListener, TcpStream},
        sync::Notify,
    };

    use super::{container_id, pod_uid};

    enum Reply {
        Full(u16, Value),
        /// Chunked body: these lines, then the end of the body or not.
        Chunked(Vec<String>, End),
    }

    enum End {
        Finish,
        /// Close the socket mid-body (no terminating chunk).
        Drop,
        /// Keep the stream open, sending nothing.
        Hold,
    }

    type Script = Box<dyn Fn(&str, usize) -> (Option<Arc<Notify>>, Reply) + Send + Sync>;

    /// Serves `script(target, n)` where n counts the requests of that kind (list or
    /// watch of the path); logs every request target.
    struct ApiServer {
        url: String,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl ApiServer {
        async fn start(script: Script) -> ApiServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let log = Arc::new(Mutex::new(Vec::new()));
            let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
            let script = Arc::new(script);
            let l = log.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(serve(conn, script.clone(), l.clone(), counts.clone()));
                }
            });
            ApiServer { url, log }
        }

        fn requests(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    async fn serve(
        conn: TcpStream,
        script: Arc<Script>,
        log: Arc<Mutex<Vec<String>>>,
        counts: Arc<Mutex<HashMap<String, usize>>>,
    ) {
        let (r, mut w) = conn.into_split();
        let mut r = BufReader::new(r);
        loop {
            // Request head: `GET <target> HTTP/1.1`, headers, blank line (GETs, no body).
            let mut first = String::new();
            if r.read_line(&mut first).await.unwrap_or(0) == 0 {
                return;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                    return;
                }
                if h == "\r\n" {
                    break;
                }
            }
            let target = first.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(target.clone());
            let path = target.split('?').next().unwrap_or("").to_string();
            let kind = if target.contains("watch=true") {
                format!("watch {path}")
            } else {
                format!("list {path}")
            };
            let n = {
                let mut c = counts.lock().unwrap();
                let e = c.entry(kind).or_default();
                *e += 1;
                *e
            };
            let (gate, reply) = script(&target, n);
            if let Some(g) = gate {
                g.notified().await;
            }
            match reply {
                Reply::Full(status, body) => {
                    let body = body.to_string();
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if w.write_all(head.as_bytes()).await.is_err()
                        || w.write_all(body.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
                Reply::Chunked(lines, end) => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                    if w.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for line in lines {
                        let chunk = format!("{line}\n");
                        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                        if w.write_all(framed.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = w.flush().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    match end {
                        End::Finish => {
                            if w.write_all(b"0\r\n\r\n").await.is_err() {
                                return;
                            }
                        }
                        End::Drop => {
                            let _ = w.shutdown().await;
                            return;
                        }
                        End::Hold => {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            }
        }
    }

    fn pod(uid: &str, cid: &str, rv: &str, labels: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "checkout-6d4f8b7c9-x2x7q", "namespace": "shop", "uid": uid,
                "resourceVersion": rv, "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "checkout-6d4f8b7c9", "uid": "rs-1", "controller": true}]
            },
            "spec": {"nodeName": "test-node", "containers": [{"name": "api"}]},
            "status": {"podIP": "10.244.1.5", "containerStatuses": [{
                "name": "api", "containerID": format!("containerd://{cid}"), "image": "shop/api",
                "imageID": "", "ready": true, "restartCount": 0}]}
        })
    }

    fn service(name: &str, ip: &str, rv: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("svc-{name}"), "resourceVersion": rv},
            "spec": {"clusterIP": ip, "clusterIPs": [ip]}})
    }

    fn list(kind: &str, rv: &str, items: Vec<Value>) -> Value {
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})
    }

    fn event(ty: &str, object: Value) -> String {
        json!({"type": ty, "object": object}).to_string()
    }

    /// A plain directory in the cgroupfs-driver layout; the cache walks it (no cgroup2
    /// file handles on a tmpfs), which also covers the walk fallback.
    fn pod_cgroup(uid: &str, cid: &str) -> (std::path::PathBuf, u64) {
        let root =
            std::env::temp_dir().join(format!("hs-api-cg-{}-{}", std::process::id(), &cid[..8]));
        let dir = root.join(format!("kubepods/burstable/pod{uid}/{cid}"));
        std::fs::create_dir_all(&dir).unwrap();
        let id = hostscope::metadata::cgroup::id_of(&dir).unwrap();
        (root, id)
    }

    fn options() -> MetadataOptions {
        MetadataOptions {
            kube_api: true,
            node_name: Some("test-node".into()),
            kubelet_log_root: "/nonexistent-kubelet-root".into(),
            ..MetadataOptions::default()
        }
    }

    fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn watch_survives_drop_garbage_and_410_and_labels_the_pod() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let uid = pod_uid();
        let cid = container_id();
        let (root, cgroup_id) = pod_cgroup(&uid, &cid);
        let gate = Arc::new(Notify::new());
        let (u, c, g) = (uid.clone(), cid.clone(), gate.clone());
        let server = rt.block_on(ApiServer::start(Box::new(move |target: &str, n| {
            let labels = |v: &str| json!({"app": "checkout", "pod-template-hash": "6d4f8b7c9", "version": v});
            if target.starts_with("/api/v1/pods") {
                if !target.contains("watch=true") {
                    return match n {
                        1 => (None, Reply::Full(200, list("PodList", "100", vec![pod(&u, &c, "100", labels("v1"))]))),
                        _ => {
                            let mut l = labels("v3");
                            l["tier"] = json!("web");
                            (None, Reply::Full(200, list("PodList", "200", vec![pod(&u, &c, "200", l)])))
                        }
                    };
                }
                return match n {
                    // A change, then the connection drops mid-stream.
                    1 => (None, Reply::Chunked(vec![event("MODIFIED", pod(&u, &c, "101", labels("v2")))], End::Drop)),
                    // Resumed (from 101): garbage JSON, then the stream ends. Held until
                    // the test has seen v2.
                    2 => (Some(g.clone()), Reply::Chunked(vec!["{\"type\": \"MODIFIED\", \"object\": {garbage".into()], End::Finish)),
                    // Resumed again: the version is too old → relist.
                    3 => (None, Reply::Chunked(vec![json!({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "too old resource version: 101 (150)", "reason": "Expired", "code": 410}}).to_string()], End::Finish)),
                    _ => (None, Reply::Chunked(vec![], End::Hold)),
                };
            }
            if target.starts_with("/api/v1/services") {
                if !target.contains("watch=true") {
                    return (None, Reply::Full(200, list("ServiceList", "10", vec![service("payments", "10.96.0.10", "10")])));
                }
                return match n {
                    1 => (None, Reply::Chunked(vec![event("ADDED", service("db", "10.96.0.20", "11"))], End::Hold)),
                    _ => (None, Reply::Chunked(vec![], End::Hold)),
                };
            }
            (None, Reply::Full(404, json!({"kind": "Status", "code": 404})))
        })));
        let resolver = Arc::new(Resolver::with_cgroups(
            options(),
            CgroupCache::at(root.clone()).unwrap(),
        ));
        let _in_rt = rt.enter();
        let client = client_for_url(&server.url).unwrap();
        let _watch = resolver.spawn_kube_watch(
            Some(client),
            Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
            },
        );
        let subject = Subject {
            pid: None,
            cgroup_id: Some(cgroup_id),
        };
        let label = |k: &str| resolver.identify(subject).get_str(k).map(String::from);
        wait_for("version v2 from the watch", Duration::from_secs(10), || {
            label("k8s.pod.label.version").as_deref() == Some("v2")
        });
        gate.notify_one();
        wait_for(
            "version v3 from the relist",
            Duration::from_secs(20),
            || label("k8s.pod.label.version").as_deref() == Some("v3"),
        );
        let id = resolver.identify(subject);
        let s = |k: &str| id.get_str(k);
        assert_eq!(s("k8s.pod.uid"), Some(uid.as_str()));
        assert_eq!(s("k8s.pod.name"), Some("checkout-6d4f8b7c9-x2x7q"));
        assert_eq!(s("k8s.namespace.name"), Some("shop"));
        assert_eq!(s("k8s.node.name"), Some("test-node"));
        assert_eq!(s("k8s.container.name"), Some("api"));
        assert_eq!(s("container.id"), Some(cid.as_str()));
        assert_eq!(s("k8s.pod.qos_class"), Some("burstable"));
        assert_eq!(s("k8s.replicaset.name"), Some("checkout-6d4f8b7c9"));
        assert_eq!(s("k8s.deployment.name"), Some("checkout"));
        assert_eq!(s("k8s.pod.label.tier"), Some("web"));
        assert_eq!(s("k8s.pod.label.app"), Some("checkout"));
        assert_eq!(s("k8s.pod.ip"), Some("10.244.1.5"));

        // Peers: services from the list and from the watch, and the pod's IP.
        let peer = |ip: &str| resolver.peer(ip.parse::<IpAddr>().unwrap());
        wait_for("service db from the watch", Duration::from_secs(5), || {
            peer("10.96.0.20").is_some()
        });
        assert_eq!(
            peer("10.96.0.10").unwrap().get_str("k8s.service.name"),
            Some("payments")
        );
        assert_eq!(
            peer("10.96.0.20").unwrap().get_str("k8s.service.name"),
            Some("db")
        );
        let p = peer("10.244.1.5").expect("pod peer");
        assert_eq!(p.get_str("k8s.deployment.name"), Some("checkout"));
        assert!(peer("192.0.2.1").is_none());

        // The wire: node-scoped selector, resume from the last version after the drop and
        // the garbage, a relist after 410.
        let reqs = server.requests();
        let pods: Vec<&String> = reqs
            .iter()
            .filter(|r| r.starts_with("/api/v1/pods"))
            .collect();
        assert!(
            pods.iter()
                .all(|r| r.contains("fieldSelector=spec.nodeName%3Dtest-node")),
            "{pods:#?}"
        );
        let watches_from_101 = pods
            .iter()
            .filter(|r| r.contains("watch=true") && r.contains("resourceVersion=101"))
            .count();
        assert_eq!(watches_from_101, 2, "{pods:#?}");
        let lists = pods.iter().filter(|r| !r.contains("watch=true")).count();
        assert_eq!(lists, 2, "{pods:#?}");
        let stats = resolver.stats();
        assert!(
            stats.kube.errors >= 3,
            "drop, garbage, 410 counted: {:?}",
            stats.kube
        );
        assert!(stats.kube.synced.contains(&"pods".to_string()));
        assert_eq!(stats.kube.pods, 1);
        rt.shutdown_background();
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn api_down_keeps_node_local_identity_and_counts() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let uid = pod_uid();
        let cid = container_id();
        let (root, cgroup_id) = pod_cgroup(&uid, &cid);
        let resolver = Arc::new(Resolver::with_cgroups(
            options(),
            CgroupCache::at(root.clone()).unwrap(),
        ));
        let port = hostscope_tests::metadata::closed_port();
        let _in_rt = rt.enter();
        let client = client_for_url(&format!("http://127.0.0.1:{port}")).unwrap();
        let _watch = resolver.spawn_kube_watch(
            Some(client),
            Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
            },
        );
        wait_for("a counted API error", Duration::from_secs(10), || {
            resolver.stats().kube.errors >= 2
        });
        let id = resolver.identify(Subject {
            pid: None,
            cgroup_id: Some(cgroup_id),
        });
        assert_eq!(id.get_str("k8s.pod.uid"), Some(uid.as_str()));
        assert_eq!(id.get_str("container.id"), Some(cid.as_str()));
        assert_eq!(id.get_str("k8s.pod.label.app"), None);
        let stats = resolver.stats();
        assert!(stats.kube.last_error.is_some(), "{:?}", stats.kube);
        assert!(stats.to_string().contains("errors"), "{stats}");
        rt.shutdown_background();
        std::fs::remove_dir_all(root).unwrap();
    }
}

/// `hostscope run` as users run it: text lines start with `[pod <ns>/<name> <container>]`
/// and JSON records carry an `identity` object, for a process in a real pod cgroup.
#[test]
fn run_binary_text_and_json_show_the_pod() {
    if !privileged("run_binary_text_and_json_show_the_pod") {
        return;
    }
    use std::io::{BufRead, BufReader};
    let bin = std::env::var_os("HOSTSCOPE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hostscope")
        });
    assert!(
        bin.exists(),
        "{} missing: cargo build -p hostscope",
        bin.display()
    );
    let kubelet = KubeletTree::new();
    let tree = CgroupTree::new();
    let uid = pod_uid();
    let cid = container_id();
    kubelet.add_pod("web", "front-1", &uid, &[("nginx", &cid)]);
    let dir = tree.make(&format!(
        "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{cid}.scope",
        uid.replace('-', "_")
    ));
    for format in ["text", "json"] {
        let mut c = Connector::spawn();
        c.move_to(&dir);
        let mut child = std::process::Command::new(&bin)
            .args([
                "run",
                "--no-api",
                "--no-prometheus",
                "--no-pin",
                "--duration",
                "15",
                "--poll-ms",
                "20",
                "--output",
                format,
            ])
            .arg("--kubelet-log-root")
            .arg(&kubelet.root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let needle = format!("127.0.0.1:{}", c.port);
        let deadline = std::time::Instant::now() + Duration::from_secs(12);
        let mut found = None;
        'outer: while std::time::Instant::now() < deadline {
            // Until the probes are attached, connects are not seen: repeat.
            c.connect();
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
                if line.contains(&needle) {
                    found = Some(line);
                    break 'outer;
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let line = found.unwrap_or_else(|| panic!("{format}: no record of the connect"));
        if format == "text" {
            assert!(
                line.starts_with("[pod web/front-1 nginx] "),
                "text line: {line}"
            );
        } else {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["type"], "tcp", "{line}");
            assert_eq!(v["identity"]["k8s.pod.name"], "front-1", "{line}");
            assert_eq!(v["identity"]["k8s.namespace.name"], "web", "{line}");
            assert_eq!(v["identity"]["k8s.container.name"], "nginx", "{line}");
            assert_eq!(v["identity"]["container.id"], cid.as_str(), "{line}");
            assert_eq!(v["identity"]["k8s.pod.qos_class"], "guaranteed", "{line}");
            assert_eq!(v["identity"]["process.executable.name"], "bash", "{line}");
        }
    }
}

/// A refused connect from a new connector in our own cgroup; the identity the agent
/// gives its record, and the connector (kept alive while the identity is checked).
fn connect_here(h: &Harness) -> (std::sync::Arc<Identity>, Connector) {
    let mut c = Connector::spawn();
    c.connect();
    let (pid, port) = (c.pid(), c.port);
    let rec = h.wait_tcp(1, WAIT, |r| {
        r.pid == Some(pid) && r.remote.port() == port && r.failure.is_some()
    })[0]
        .clone();
    let id = h.agent().resolver().identify(Record::Tcp(rec).subject());
    (id, c)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metadata_options_change_live() {
    if !privileged("metadata_options_change_live") {
        return;
    }
    let h = harness(None);
    let (id, first) = connect_here(&h);
    let full = s(&id, "process.command_line").unwrap().to_string();
    assert!(full.len() > 40, "{full}");
    assert!(
        full.ends_with("hostscope-connector --password=***"),
        "{full}"
    );

    // Shorter command lines: the next record of a new process has one.
    let resolver = h.agent().resolver();
    let mut o = resolver.options();
    o.cmdline.max_bytes = 24;
    o.revalidate_ms = 300;
    assert_eq!(
        h.agent().set_metadata_options(o.clone()),
        Vec::<&str>::new()
    );
    assert_eq!(resolver.options(), o);
    let (id, _second) = connect_here(&h);
    let cut = s(&id, "process.command_line").unwrap();
    assert_eq!(cut, format!("{}…", &full[..24]));
    // Identities cached under the old policy are rebuilt, not served stale.
    let old = resolver.identify(hostscope::metadata::Subject {
        pid: Some(first.pid()),
        cgroup_id: None,
    });
    assert_eq!(s(&old, "process.command_line"), Some(cut));

    // Identity off and on again.
    let mut off = o.clone();
    off.enabled = false;
    h.agent().set_metadata_options(off);
    let (id, _third) = connect_here(&h);
    assert_eq!(
        id.attributes
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["process.pid"]
    );
    h.agent().set_metadata_options(o.clone());
    let (id, _fourth) = connect_here(&h);
    assert!(s(&id, "process.command_line").is_some(), "{id:?}");

    // The API watch starts, and restarts on a new kubeconfig (each missing file is
    // reported by its own client error), and stops when turned off.
    let errors = |r: &hostscope::metadata::Resolver| r.stats().kube.last_error;
    for file in ["/nonexistent/kubeconfig-a", "/nonexistent/kubeconfig-b"] {
        let mut k = o.clone();
        k.kube_api = true;
        k.kubeconfig = Some(file.into());
        h.agent().set_metadata_options(k);
        wait_for(&format!("a client error naming {file}"), || {
            errors(&resolver).is_some_and(|e| e.contains(file))
        });
    }
    h.agent().set_metadata_options(o.clone());
    assert!(!h.agent().kube_watch_running());
}
