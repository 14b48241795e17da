//! Who a record belongs to: the process, container and Kubernetes pod behind a pid and
//! cgroup id, and the workload behind a remote address. Sinks (printer, OTLP exporter,
//! local API) ask the [`Resolver`] for an [`Identity`] per record; identities are cached
//! and shared (`Arc`) so a cache hit costs a hash lookup, not an allocation.

pub mod cgroup;
pub mod kube;
pub mod kubelet;
pub mod process;
pub mod upkeep;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

pub use cgroup::{CgroupCache, CgroupInfo, QosClass, Runtime};
pub use process::{CmdlinePolicy, ProcessCache, ProcessInfo};

/// An attribute value as OpenTelemetry carries it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// Attributes keyed by their OTel semantic-convention names (`k8s.pod.name`,
/// `container.id`, `process.pid`, …), in a stable order.
pub type Attributes = Vec<(String, AttrValue)>;

/// Everything known about the subject of a record. Serializes as one JSON object of its
/// attributes, in order (`{"process.pid": 42, "k8s.pod.name": "…", …}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    pub attributes: Attributes,
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.attributes.len()))?;
        for (k, v) in &self.attributes {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Identity {
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// The pid and cgroup a record was observed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Subject {
    pub pid: Option<u32>,
    pub cgroup_id: Option<u64>,
}

impl Identity {
    /// A short label for text output: `pod <ns>/<name> <container>` for pods,
    /// `container <id12>` for other containers, `None` for host processes.
    pub fn label(&self) -> Option<String> {
        if let (Some(ns), Some(pod)) = (
            self.get_str("k8s.namespace.name"),
            self.get_str("k8s.pod.name"),
        ) {
            let container = self
                .get_str("k8s.container.name")
                .or(self.get_str("container.id").map(|c| &c[..c.len().min(12)]))
                .unwrap_or("?");
            return Some(format!("pod {ns}/{pod} {container}"));
        }
        if let Some(uid) = self.get_str("k8s.pod.uid") {
            let container = self
                .get_str("container.id")
                .map(|c| &c[..c.len().min(12)])
                .unwrap_or("?");
            return Some(format!("pod uid {uid} {container}"));
        }
        self.get_str("container.id")
            .map(|c| format!("container {}", &c[..c.len().min(12)]))
    }
}

/// `metadata:` in the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataOptions {
    /// Resolve identities at all (off: records carry only `process.pid`).
    pub enabled: bool,
    /// Read process details (/proc) for records with a pid.
    pub processes: bool,
    pub cmdline: CmdlinePolicy,
    /// Parent of the kubelet's `pods/` and `containers/` log directories.
    pub kubelet_log_root: PathBuf,
    /// Watch this node's pods and the cluster's services on the Kubernetes API.
    pub kube_api: bool,
    /// kubeconfig file (default: in-cluster service account, then $KUBECONFIG).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (default: $NODE_NAME, then the host name).
    pub node_name: Option<String>,
    /// How often exited processes and removed cgroups are evicted, in milliseconds.
    pub revalidate_ms: u64,
    /// Identities cached at most (beyond: the cache is cleared and refilled, counted).
    pub max_identities: usize,
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            enabled: true,
            processes: true,
            cmdline: CmdlinePolicy::default(),
            kubelet_log_root: PathBuf::from("/var/log"),
            kube_api: false,
            kubeconfig: None,
            node_name: None,
            revalidate_ms: 2000,
            max_identities: 65_536,
        }
    }
}

impl MetadataOptions {
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(hostname)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Help for `metadata:` in the configuration.
pub const METADATA_DOCS: crate::config::Docs = &[
    (
        "",
        "Who a record belongs to: process, container, pod and workload.",
    ),
    (
        "enabled",
        "Resolve identities at all (off: records carry only the pid).",
    ),
    (
        "processes",
        "Read process details from /proc: executable, command line, owner.",
    ),
    ("cmdline", "How command lines are shortened and scrubbed."),
    ("cmdline.max_bytes", "Longest command line kept, in bytes."),
    (
        "cmdline.redact_keys",
        "The value of an argument whose name contains one of these words is replaced\n\
         by ***.",
    ),
    (
        "kubelet_log_root",
        "Parent of the kubelet's pods/ and containers/ log directories.",
    ),
    (
        "kube_api",
        "Watch this node's pods and the services on the Kubernetes API (labels,\n\
         owners, peer identity).",
    ),
    (
        "kubeconfig",
        "kubeconfig for kube_api; null: in-cluster service account, then $KUBECONFIG.",
    ),
    (
        "node_name",
        "This node's name; null: $NODE_NAME, then the host name.",
    ),
    (
        "revalidate_ms",
        "How often exited processes and removed cgroups are evicted, in milliseconds.",
    ),
    (
        "max_identities",
        "Identities cached at most (beyond: the cache is cleared and refilled, counted).",
    ),
];

/// Checks `metadata:` of the configuration.
pub fn validate_options(o: &MetadataOptions, at: &str, p: &mut crate::config::Problems) {
    if !o.kubelet_log_root.is_absolute() {
        p.push(
            format!("{at}.kubelet_log_root"),
            format_args!("{:?} is not an absolute path", o.kubelet_log_root),
        );
    }
    if o.cmdline.max_bytes < 16 {
        p.push(format!("{at}.cmdline.max_bytes"), "must be at least 16");
    }
    if !(100..=3_600_000).contains(&o.revalidate_ms) {
        p.push(
            format!("{at}.revalidate_ms"),
            "must be between 100 and 3600000",
        );
    }
    if o.max_identities == 0 {
        p.push(format!("{at}.max_identities"), "must be at least 1");
    }
    if let Some(k) = &o.kubeconfig {
        if !k.exists() {
            p.push(
                format!("{at}.kubeconfig"),
                format_args!("{} does not exist", k.display()),
            );
        }
    }
}

/// The resolver's account of itself.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MetadataStats {
    pub identities_cached: usize,
    pub hits: u64,
    pub builds: u64,
    pub cache_resets: u64,
    pub cgroups: cgroup::CgroupStats,
    pub processes: process::ProcessStats,
    pub kubelet_scans: u64,
    pub kube: KubeStats,
    /// What the agent's capabilities keep from identities, each naming the missing
    /// capability (empty with the DaemonSet's list or as full root).
    pub limits: Vec<String>,
}

/// The identity lookups a missing capability degrades, said where the counters are read.
/// The kernel refuses these per process, without an error worth a line per record.
pub fn capability_limits() -> Vec<String> {
    use crate::loader::privilege::{missing, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE};
    let mut limits = Vec::new();
    for cap in missing(&[CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]) {
        limits.push(if cap == CAP_SYS_PTRACE {
            "needs CAP_SYS_PTRACE: processes of other users, and root processes holding \
             capabilities the agent lacks, are named by pid only (/proc/<pid>/exe, cmdline, \
             maps and root refused), and their OpenSSL copies get no uprobes"
                .to_string()
        } else {
            "needs CAP_DAC_READ_SEARCH: a cgroup id is resolved by walking the cgroup tree \
             (open_by_handle_at refused), slower"
                .to_string()
        });
    }
    limits
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KubeStats {
    pub events: u64,
    pub errors: u64,
    pub synced: Vec<String>,
    pub last_error: Option<String>,
    pub pods: usize,
    pub services: usize,
}

struct Cached {
    generation: u64,
    identity: Arc<Identity>,
    /// Built while the pod or container name was still unknown (kubelet directory not
    /// written or not rescanned yet): served until then, then rebuilt, instead of kept
    /// for good. API changes need no such timer: they bump the generation.
    retry_at: Option<Instant>,
    /// Incomplete builds in a row: the retry interval doubles with each, from
    /// [`INCOMPLETE_RETRY`] up to [`INCOMPLETE_RETRY_MAX`], so a pod whose name never
    /// appears costs a rebuild every few seconds, not every 50 ms.
    attempts: u32,
    /// Hit since the last eviction pass: its process gets the full pid-reuse check.
    used: std::sync::atomic::AtomicBool,
}

/// A peer lookup (also a negative one) and the cluster generation it was made in.
type CachedPeer = (u64, Option<Arc<Identity>>);

/// How long an incomplete identity is first served before being rebuilt; equal to the
/// kubelet rescan interval, so the rebuild can see a directory the kubelet just wrote.
const INCOMPLETE_RETRY: Duration = KUBELET_RESCAN;
const INCOMPLETE_RETRY_MAX: Duration = Duration::from_secs(5);
const KUBELET_RESCAN: Duration = Duration::from_millis(50);

/// Resolves subjects and peers to identities. Shared as `Arc<Resolver>`; every method
/// takes `&self` (caches behind locks). A cache hit is one read lock and one hash lookup.
pub struct Resolver {
    /// Changed live by [`Resolver::set_options`]; the hot-path switches are copied into
    /// atomics so a cache hit takes no extra lock.
    options: RwLock<MetadataOptions>,
    enabled: AtomicBool,
    process_details: AtomicBool,
    max_identities: AtomicUsize,
    node: RwLock<String>,
    host: String,
    cgroups: CgroupCache,
    processes: ProcessCache,
    kubelet: kubelet::KubeletLogs,
    cluster: RwLock<kube::ClusterStore>,
    /// Bumped by every cluster change: cached identities of older generations are rebuilt.
    generation: AtomicU64,
    identities: RwLock<HashMap<Subject, Cached>>,
    peers: RwLock<HashMap<IpAddr, CachedPeer>>,
    hits: AtomicU64,
    builds: AtomicU64,
    resets: AtomicU64,
    kube: Mutex<KubeStats>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::node_local()
    }
}

impl Resolver {
    /// Identity from what the node alone tells (no Kubernetes API), default options.
    pub fn node_local() -> Resolver {
        Resolver::new(MetadataOptions::default())
    }

    pub fn new(options: MetadataOptions) -> Resolver {
        let cgroups = CgroupCache::discover().unwrap_or_else(|_| CgroupCache::unavailable());
        Resolver::with_cgroups(options, cgroups)
    }

    /// With an explicit cgroup cache (tests, benches).
    pub fn with_cgroups(options: MetadataOptions, cgroups: CgroupCache) -> Resolver {
        Resolver {
            node: RwLock::new(options.node_name()),
            enabled: AtomicBool::new(options.enabled),
            process_details: AtomicBool::new(options.processes),
            max_identities: AtomicUsize::new(options.max_identities),
            host: hostname(),
            processes: ProcessCache::new(options.cmdline.clone()),
            kubelet: kubelet::KubeletLogs::new(options.kubelet_log_root.clone(), KUBELET_RESCAN),
            cgroups,
            options: RwLock::new(options),
            cluster: RwLock::new(kube::ClusterStore::default()),
            generation: AtomicU64::new(0),
            identities: RwLock::new(HashMap::new()),
            peers: RwLock::new(HashMap::new()),
            hits: AtomicU64::new(0),
            builds: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            kube: Mutex::new(KubeStats::default()),
        }
    }

    /// The options in force now (a copy: they can change live).
    pub fn options(&self) -> MetadataOptions {
        self.options
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn node_name(&self) -> String {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies what the resolver itself uses of new options: identity on/off, process
    /// details, command-line policy, kubelet log root, cache bound and node name. Every
    /// cached identity built under the old options is rebuilt on its next use (a
    /// generation bump, as for cluster changes), and cached processes and the kubelet
    /// snapshot are dropped when their inputs changed. The Kubernetes watch and the
    /// eviction timer are tasks of the agent: see `Agent::set_metadata_options`.
    pub fn set_options(&self, options: MetadataOptions) {
        let old = self.options();
        if old == options {
            return;
        }
        if old.cmdline != options.cmdline {
            self.processes.set_policy(options.cmdline.clone());
        }
        if old.kubelet_log_root != options.kubelet_log_root {
            self.kubelet.set_root(options.kubelet_log_root.clone());
        }
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = options.node_name();
        self.enabled.store(options.enabled, Ordering::Release);
        self.process_details
            .store(options.processes, Ordering::Release);
        self.max_identities
            .store(options.max_identities, Ordering::Release);
        *self.options.write().unwrap_or_else(|p| p.into_inner()) = options;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn identify(&self, subject: Subject) -> Arc<Identity> {
        if !self.enabled.load(Ordering::Acquire) {
            let mut attributes = Attributes::new();
            if let Some(pid) = subject.pid {
                attributes.push(("process.pid".into(), i64::from(pid).into()));
            }
            return Arc::new(Identity { attributes });
        }
        let generation = self.generation.load(Ordering::Acquire);
        {
            let map = self.identities.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = map.get(&subject) {
                let fresh = c.retry_at.is_none_or(|t| Instant::now() < t);
                if c.generation == generation && fresh {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    // Load first: a store on every hit would bounce the cache line.
                    if !c.used.load(Ordering::Relaxed) {
                        c.used.store(true, Ordering::Relaxed);
                    }
                    return c.identity.clone();
                }
            }
        }
        self.builds.fetch_add(1, Ordering::Relaxed);
        let (identity, complete) = self.build(subject);
        let identity = Arc::new(identity);
        let mut map = self.identities.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_identities.load(Ordering::Relaxed) && !map.contains_key(&subject) {
            map.clear();
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
        let attempts = match (complete, map.get(&subject)) {
            (true, _) => 0,
            (false, Some(old)) if old.retry_at.is_some() => old.attempts.saturating_add(1),
            (false, _) => 0,
        };
        let retry_at = (!complete).then(|| {
            let wait = INCOMPLETE_RETRY.saturating_mul(1 << attempts.min(10));
            Instant::now() + wait.min(INCOMPLETE_RETRY_MAX)
        });
        map.insert(
            subject,
            Cached {
                generation,
                identity: identity.clone(),
                retry_at,
                attempts,
                used: std::sync::atomic::AtomicBool::new(true),
            },
        );
        identity
    }

    /// The cgroup of a subject: by id (any process, even exited), else from /proc.
    fn cgroup_of(&self, subject: Subject) -> Option<Arc<CgroupInfo>> {
        if let Some(id) = subject.cgroup_id.filter(|id| *id != 0) {
            if let Some(info) = self.cgroups.get(id) {
                return Some(info);
            }
        }
        let pid = subject.pid?;
        let rel = cgroup::path_of_pid(pid)?;
        Some(
            self.cgroups
                .get_by_path(subject.cgroup_id.filter(|id| *id != 0), &rel),
        )
    }

    fn build(&self, subject: Subject) -> (Identity, bool) {
        let mut a = Attributes::new();
        let mut complete = true;
        let mut put = |k: &str, v: AttrValue| a.push((k.to_string(), v));
        put("host.name", self.host.as_str().into());
        if let Some(pid) = subject.pid {
            put("process.pid", i64::from(pid).into());
            if self.process_details.load(Ordering::Acquire) {
                if let Some(p) = self.processes.get(pid) {
                    put("process.parent_pid", i64::from(p.parent_pid).into());
                    put("process.executable.name", p.name.as_str().into());
                    if let Some(exe) = &p.exe {
                        put("process.executable.path", exe.as_str().into());
                    }
                    put("process.command_line", p.command_line.as_str().into());
                    if let Some(uid) = p.uid {
                        put("process.user.id", i64::from(uid).into());
                    }
                    if let Some(owner) = &p.owner {
                        put("process.owner", owner.as_str().into());
                    }
                    if let Some(t) = &p.creation_time {
                        put("process.creation.time", t.as_str().into());
                    }
                }
            }
        }
        let cg = self.cgroup_of(subject);
        let Some(cg) = cg else {
            // Neither the cgroup nor the process could be found: say so, not "host".
            put("hostscope.scope", "unknown".into());
            return (Identity { attributes: a }, true);
        };
        put("hostscope.cgroup.path", cg.path.as_str().into());
        if cg.is_host() {
            put("hostscope.scope", "host".into());
            return (Identity { attributes: a }, true);
        }
        put(
            "hostscope.scope",
            if cg.pod_uid.is_some() {
                "pod"
            } else {
                "container"
            }
            .into(),
        );
        if let Some(id) = &cg.container_id {
            put("container.id", id.as_str().into());
        }
        if let Some(rt) = cg.runtime {
            put("container.runtime", rt.as_str().into());
        }
        let Some(uid) = &cg.pod_uid else {
            return (Identity { attributes: a }, true);
        };
        put("k8s.pod.uid", uid.as_str().into());
        if let Some(qos) = cg.qos {
            put("k8s.pod.qos_class", qos.as_str().into());
        }
        let api_pod = self
            .cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .pods
            .get(uid)
            .cloned();
        if let Some(pod) = api_pod {
            put("k8s.pod.name", pod.name.as_str().into());
            put("k8s.namespace.name", pod.namespace.as_str().into());
            put(
                "k8s.node.name",
                pod.node.clone().unwrap_or_else(|| self.node_name()).into(),
            );
            let container = cg
                .container_id
                .as_ref()
                .and_then(|id| pod.containers.get(id).cloned())
                .or_else(|| {
                    let id = cg.container_id.as_ref()?;
                    self.kubelet.container(id).map(|c| c.name.clone())
                });
            if let Some(c) = container {
                put("k8s.container.name", c.into());
            }
            for (k, v) in &pod.workload {
                put(k, v.as_str().into());
            }
            if let Some(ip) = pod.ip {
                put("k8s.pod.ip", ip.to_string().into());
            }
            put("k8s.pod.host_network", pod.host_network.into());
            for (k, v) in &pod.labels {
                put(&format!("k8s.pod.label.{k}"), v.as_str().into());
            }
            return (Identity { attributes: a }, true);
        }
        match self.kubelet.pod(uid) {
            Some(pod) => {
                put("k8s.pod.name", pod.name.as_str().into());
                put("k8s.namespace.name", pod.namespace.as_str().into());
                put("k8s.node.name", self.node_name().into());
            }
            None => complete = false,
        }
        if let Some(id) = &cg.container_id {
            match self.kubelet.container(id) {
                Some(c) => put("k8s.container.name", c.name.as_str().into()),
                None => complete = false,
            }
        }
        (Identity { attributes: a }, complete)
    }

    /// The cluster workload (pod or service) behind a remote address, when known.
    pub fn peer(&self, addr: IpAddr) -> Option<Arc<Identity>> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((g, id)) = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
        {
            if *g == generation {
                return id.clone();
            }
        }
        let id = {
            let cluster = self.cluster.read().unwrap_or_else(|p| p.into_inner());
            if let Some(svc) = cluster.services_by_ip.get(&addr) {
                Some(Arc::new(Identity {
                    attributes: vec![
                        ("k8s.service.name".into(), svc.name.as_str().into()),
                        ("k8s.namespace.name".into(), svc.namespace.as_str().into()),
                    ],
                }))
            } else if let Some(pod) = cluster
                .pod_by_ip
                .get(&addr)
                .and_then(|uid| cluster.pods.get(uid))
            {
                let mut attributes: Attributes = vec![
                    ("k8s.pod.name".into(), pod.name.as_str().into()),
                    ("k8s.namespace.name".into(), pod.namespace.as_str().into()),
                    ("k8s.pod.uid".into(), pod.uid.as_str().into()),
                ];
                for (k, v) in &pod.workload {
                    attributes.push((k.to_string(), v.as_str().into()));
                }
                Some(Arc::new(Identity { attributes }))
            } else {
                None
            }
        };
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= self.max_identities.load(Ordering::Relaxed) {
            peers.clear();
        }
        peers.insert(addr, (generation, id.clone()));
        id
    }

    /// Evicts exited processes (and reused pids) and removed cgroups; run on a timer.
    pub fn maintain(&self) {
        let (mut used, mut pids) = (HashSet::new(), HashSet::new());
        for (s, c) in self
            .identities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(pid) = s.pid {
                pids.insert(pid);
                if c.used.swap(false, Ordering::Relaxed) {
                    used.insert(pid);
                }
            }
        }
        let mut gone: HashSet<u32> = self
            .processes
            .revalidate_some(Some(&used))
            .into_iter()
            .collect();
        // Identities built once their process had already exited (short-lived processes
        // are often gone when their records are resolved) have no process entry to
        // revalidate: without this they would pile up until the cache bound clears it.
        gone.extend(
            pids.into_iter()
                .filter(|&pid| !self.processes.contains(pid) && !process::alive(pid)),
        );
        let pruned = self.cgroups.prune();
        if gone.is_empty() && pruned == 0 {
            return;
        }
        let mut map = self.identities.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|s, _| s.pid.is_none_or(|p| !gone.contains(&p)));
        if pruned > 0 {
            // Identities of removed cgroups are never asked for again (ids are not reused).
            map.retain(|s, _| s.cgroup_id.is_none_or(|id| self.cgroups.contains(id)));
        }
    }

    /// Applies a change to the cluster store; cached identities are rebuilt lazily.
    pub fn update_cluster(&self, f: impl FnOnce(&mut kube::ClusterStore)) {
        let mut c = self.cluster.write().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn kube_stats(&self) -> std::sync::MutexGuard<'_, KubeStats> {
        self.kube.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn kube_event(&self) {
        self.kube_stats().events += 1;
    }

    pub(crate) fn kube_synced(&self, what: &str) {
        let mut k = self.kube_stats();
        if !k.synced.iter().any(|s| s == what) {
            k.synced.push(what.to_string());
        }
    }

    pub(crate) fn kube_error(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut k = self.kube_stats();
        k.errors += 1;
        k.last_error = Some(format!("{what}: {e}"));
    }

    /// Starts the Kubernetes API watches (pods of this node, services) on the current
    /// tokio runtime. A client that cannot be built is reported and counted; the
    /// node-local identity keeps working either way.
    pub fn spawn_kube_watch(
        self: &Arc<Self>,
        client: Option<::kube::Client>,
        backoff: kube::Backoff,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let client = match client {
                Some(c) => c,
                None => match kube::client(me.options().kubeconfig.as_deref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        me.kube_error("client", &e);
                        return;
                    }
                },
            };
            let pods = kube::watch_pods(client.clone(), me.node_name(), me.clone(), backoff);
            let services = kube::watch_services(client, me.clone(), backoff);
            tokio::join!(pods, services);
        })
    }

    pub fn stats(&self) -> MetadataStats {
        let mut kube = self.kube_stats().clone();
        {
            let c = self.cluster.read().unwrap_or_else(|p| p.into_inner());
            kube.pods = c.pods.len();
            kube.services = c.service_count();
        }
        MetadataStats {
            identities_cached: self
                .identities
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            hits: self.hits.load(Ordering::Relaxed),
            builds: self.builds.load(Ordering::Relaxed),
            cache_resets: self.resets.load(Ordering::Relaxed),
            cgroups: self.cgroups.stats(),
            processes: self.processes.stats(),
            kubelet_scans: self.kubelet.scans(),
            kube,
            limits: capability_limits(),
        }
    }
}

impl std::fmt::Display for MetadataStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "metadata: {} identities ({} hits, {} builds, {} resets), cgroups {} cached / {} misses / {} unresolved / {} pruned, processes {} cached / {} gone / {} exited / {} reused, kubelet scans {}, kube api {} events {} errors{}{}",
            self.identities_cached,
            self.hits,
            self.builds,
            self.cache_resets,
            self.cgroups.cached,
            self.cgroups.misses,
            self.cgroups.unresolved,
            self.cgroups.pruned,
            self.processes.cached,
            self.processes.gone,
            self.processes.evicted_exited,
            self.processes.evicted_reused,
            self.kubelet_scans,
            self.kube.events,
            self.kube.errors,
            self.kube
                .last_error
                .as_ref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default(),
            self.limits
                .iter()
                .map(|l| format!("; {l}"))
                .collect::<String>()
        )
    }
}
