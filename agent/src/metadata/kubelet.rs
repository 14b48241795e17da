//! Pod names from the kubelet's log layout, with no API access:
//!
//! - `<root>/pods/<namespace>_<pod>_<uid>/<container>/` → pod name, namespace and
//!   container names per pod UID (names cannot hold `_`, so the split is unambiguous);
//! - `<root>/containers/<pod>_<namespace>_<container>-<container id>.log` symlinks →
//!   container id → container name.
//!
//! `<root>` is `/var/log` on a node. The two directories are read again on a miss for an
//! unknown pod UID or container id, at most once per `min_rescan` (a readdir of two flat
//! directories, not a tree walk).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeletPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub containers: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeletContainer {
    pub pod: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Default)]
pub struct KubeletSnapshot {
    pub pods: HashMap<String, Arc<KubeletPod>>,
    pub containers: HashMap<String, Arc<KubeletContainer>>,
    /// Directory entries that did not parse (counted, not fatal).
    pub malformed: u64,
}

/// `<namespace>_<pod>_<uid>`.
pub fn parse_pod_dir(name: &str) -> Option<(String, String, String)> {
    let mut parts = name.splitn(3, '_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if ns.is_empty() || pod.is_empty() || uid.is_empty() || uid.contains('_') {
        return None;
    }
    Some((ns.to_string(), pod.to_string(), uid.to_string()))
}

/// `<pod>_<namespace>_<container>-<64 hex>.log` → (pod, namespace, container, id).
pub fn parse_container_log(name: &str) -> Option<(String, String, String, String)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.splitn(3, '_');
    let (pod, ns, container) = (parts.next()?, parts.next()?, parts.next()?);
    if pod.is_empty() || ns.is_empty() || container.is_empty() || container.contains('_') {
        return None;
    }
    Some((
        pod.to_string(),
        ns.to_string(),
        container.to_string(),
        id.to_string(),
    ))
}

/// Reads both directories under `root` (missing ones are simply empty). Pods already in
/// `previous` are kept without reading their directory again, so a rescan costs two
/// readdirs plus one per new pod (container names come from `containers/`).
pub fn scan(root: &std::path::Path, previous: Option<&KubeletSnapshot>) -> KubeletSnapshot {
    let mut snap = KubeletSnapshot::default();
    if let Ok(entries) = std::fs::read_dir(root.join("pods")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((namespace, pod, uid)) = parse_pod_dir(&name) else {
                snap.malformed += 1;
                continue;
            };
            if let Some(known) = previous.and_then(|p| p.pods.get(&uid)) {
                if known.name == pod && known.namespace == namespace {
                    snap.pods.insert(uid, known.clone());
                    continue;
                }
            }
            let mut containers: Vec<String> = std::fs::read_dir(e.path())
                .map(|d| {
                    d.flatten()
                        .filter(|c| c.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|c| c.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            containers.sort();
            snap.pods.insert(
                uid.clone(),
                Arc::new(KubeletPod {
                    uid,
                    namespace,
                    name: pod,
                    containers,
                }),
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.join("containers")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match parse_container_log(&name) {
                Some((pod, namespace, container, id)) => {
                    snap.containers.insert(
                        id,
                        Arc::new(KubeletContainer {
                            pod,
                            namespace,
                            name: container,
                        }),
                    );
                }
                None => snap.malformed += 1,
            }
        }
    }
    snap
}

struct Inner {
    snap: Arc<KubeletSnapshot>,
    last_scan: Option<Instant>,
    scans: u64,
}

/// The kubelet layout under a root, rescanned on misses (rate limited).
pub struct KubeletLogs {
    /// Changed live by [`KubeletLogs::set_root`].
    root: std::sync::RwLock<PathBuf>,
    min_rescan: Duration,
    inner: Mutex<Inner>,
    /// One rescan at a time: a caller that misses while another scans waits for that
    /// scan instead of taking the snapshot it is about to replace (several sinks
    /// resolve the same new pod at once).
    scanning: Mutex<()>,
}

impl KubeletLogs {
    pub fn new(root: PathBuf, min_rescan: Duration) -> KubeletLogs {
        KubeletLogs {
            root: std::sync::RwLock::new(root),
            min_rescan,
            inner: Mutex::new(Inner {
                snap: Arc::new(KubeletSnapshot::default()),
                last_scan: None,
                scans: 0,
            }),
            scanning: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current snapshot; rescanned first when `missing` says the caller looked for
    /// something absent and the last scan is old enough.
    fn snapshot(&self, missing: impl Fn(&KubeletSnapshot) -> bool) -> Arc<KubeletSnapshot> {
        let snap = self.lock().snap.clone();
        if !missing(&snap) {
            return snap;
        }
        let _one_scan = self.scanning.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut inner = self.lock();
            // The scan this caller waited for may have found it.
            if !missing(&inner.snap) {
                return inner.snap.clone();
            }
            if inner
                .last_scan
                .is_some_and(|t| t.elapsed() < self.min_rescan)
            {
                return inner.snap.clone();
            }
            inner.last_scan = Some(Instant::now());
        }
        let previous = self.lock().snap.clone();
        let root = self.root.read().unwrap_or_else(|p| p.into_inner()).clone();
        let fresh = Arc::new(scan(&root, Some(&previous)));
        let mut inner = self.lock();
        inner.scans += 1;
        inner.snap = fresh.clone();
        fresh
    }

    pub fn pod(&self, uid: &str) -> Option<Arc<KubeletPod>> {
        self.snapshot(|s| !s.pods.contains_key(uid))
            .pods
            .get(uid)
            .cloned()
    }

    pub fn container(&self, id: &str) -> Option<Arc<KubeletContainer>> {
        self.snapshot(|s| !s.containers.contains_key(id))
            .containers
            .get(id)
            .cloned()
    }

    /// Reads the layout under another root from now on: the snapshot of the old one is
    /// dropped and the next miss rescans at once.
    pub fn set_root(&self, root: PathBuf) {
        *self.root.write().unwrap_or_else(|p| p.into_inner()) = root;
        let mut inner = self.lock();
        inner.snap = Arc::new(KubeletSnapshot::default());
        inner.last_scan = None;
    }

    pub fn scans(&self) -> u64 {
        self.lock().scans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2a9d0c1e3b5a7f9d8c6b4a2e0f1d3c5b7a9e8d6c4b2a0f1e3d5c7b9a8e6d4c";

    #[test]
    fn parses_names() {
        assert_eq!(
            parse_pod_dir("shop_checkout-7d9f_1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"),
            Some((
                "shop".into(),
                "checkout-7d9f".into(),
                "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d".into()
            ))
        );
        for bad in ["", "a", "a_b", "_b_c", "a__c", "a_b_c_d"] {
            assert_eq!(parse_pod_dir(bad), None, "{bad}");
        }
        assert_eq!(
            parse_container_log(&format!("checkout-7d9f_shop_api-server-{ID}.log")),
            Some((
                "checkout-7d9f".into(),
                "shop".into(),
                "api-server".into(),
                ID.into()
            ))
        );
        for bad in [
            "x.log".to_string(),
            format!("p_n_c-{ID}.txt"),
            format!("p_n_c-{}.log", &ID[..60]),
            format!("p_n-{ID}.log"),
            format!("__c-{ID}.log"),
        ] {
            assert_eq!(parse_container_log(&bad), None, "{bad}");
        }
    }

    #[test]
    fn scans_a_tree_and_rescans_on_miss() {
        let root = std::env::temp_dir().join(format!("hs-kubelet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let uid = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
        std::fs::create_dir_all(root.join(format!("pods/shop_checkout_{uid}/api"))).unwrap();
        std::fs::create_dir_all(root.join(format!("pods/shop_checkout_{uid}/sidecar"))).unwrap();
        std::fs::create_dir_all(root.join("pods/not-a-pod-dir")).unwrap();
        std::fs::create_dir_all(root.join("containers")).unwrap();
        std::os::unix::fs::symlink(
            root.join(format!("pods/shop_checkout_{uid}/api/0.log")),
            root.join(format!("containers/checkout_shop_api-{ID}.log")),
        )
        .unwrap();
        let logs = KubeletLogs::new(root.clone(), Duration::ZERO);
        let pod = logs.pod(uid).expect("pod");
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("shop", "checkout")
        );
        assert_eq!(
            pod.containers,
            vec!["api".to_string(), "sidecar".to_string()]
        );
        let c = logs.container(ID).expect("container");
        assert_eq!(c.name, "api");
        assert_eq!(logs.lock().snap.malformed, 1);
        // A pod that appears later is found by the rescan a miss triggers.
        let uid2 = "00000000-0000-0000-0000-000000000002";
        assert!(logs.pod(uid2).is_none());
        std::fs::create_dir_all(root.join(format!("pods/kube-system_dns_{uid2}/coredns"))).unwrap();
        assert_eq!(logs.pod(uid2).expect("new pod").name, "dns");
        // Rate limit: with a long interval, a miss does not rescan again.
        let slow = KubeletLogs::new(root.clone(), Duration::from_secs(3600));
        assert!(slow.pod("nope").is_none());
        assert!(slow.pod("nope2").is_none());
        assert_eq!(slow.scans(), 1);
        // A missing root is empty, not an error.
        let none = KubeletLogs::new(root.join("absent"), Duration::ZERO);
        assert!(none.pod(uid).is_none());
        std::fs::remove_dir_all(root).unwrap();
    }
}
