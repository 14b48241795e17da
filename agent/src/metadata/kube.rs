//! Full pod identity from the Kubernetes API: a watch of the pods on this node (field
//! selector `spec.nodeName`) and of services (cluster IPs, for peer identity), with the
//! `kube` runtime watcher, which lists, watches from the list's resourceVersion, resumes
//! from the last version seen after a dropped connection and relists after `410 Gone`.
//! Errors are counted and retried with backoff; the node-local identity never waits on it.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{
    runtime::watcher::{self, Event},
    Api, Client,
};

use super::Resolver;

/// What the API says of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    pub ip: Option<IpAddr>,
    pub host_network: bool,
    pub labels: BTreeMap<String, String>,
    /// Workload attributes (`k8s.deployment.name`, `k8s.replicaset.name`, …).
    pub workload: Vec<(&'static str, String)>,
    /// Container id (without `containerd://`) → container name.
    pub containers: HashMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMeta {
    pub name: String,
    pub namespace: String,
}

/// Pods and services from the API, indexed for the resolver.
#[derive(Clone, Debug, Default)]
pub struct ClusterStore {
    pub pods: HashMap<String, Arc<PodMeta>>,
    pub pod_by_ip: HashMap<IpAddr, String>,
    pub services_by_ip: HashMap<IpAddr, Arc<ServiceMeta>>,
    /// (namespace, name) → cluster IPs, to drop the old IPs on update/delete.
    service_ips: HashMap<(String, String), Vec<IpAddr>>,
}

impl ClusterStore {
    pub fn apply_pod(&mut self, pod: PodMeta) {
        self.delete_pod(&pod.uid);
        // Host-network pods share the node's IP: it identifies no pod.
        if let (Some(ip), false) = (pod.ip, pod.host_network) {
            self.pod_by_ip.insert(ip, pod.uid.clone());
        }
        self.pods.insert(pod.uid.clone(), Arc::new(pod));
    }

    pub fn delete_pod(&mut self, uid: &str) {
        if let Some(old) = self.pods.remove(uid) {
            if let Some(ip) = old.ip {
                if self.pod_by_ip.get(&ip).is_some_and(|u| u == uid) {
                    self.pod_by_ip.remove(&ip);
                }
            }
        }
    }

    pub fn replace_pods(&mut self, pods: Vec<PodMeta>) {
        self.pods.clear();
        self.pod_by_ip.clear();
        for p in pods {
            self.apply_pod(p);
        }
    }

    pub fn apply_service(&mut self, namespace: String, name: String, ips: Vec<IpAddr>) {
        let key = (namespace.clone(), name.clone());
        self.delete_service(&key.0, &key.1);
        let meta = Arc::new(ServiceMeta { name, namespace });
        for ip in &ips {
            self.services_by_ip.insert(*ip, meta.clone());
        }
        self.service_ips.insert(key, ips);
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        if let Some(ips) = self
            .service_ips
            .remove(&(namespace.to_string(), name.to_string()))
        {
            for ip in ips {
                self.services_by_ip.remove(&ip);
            }
        }
    }

    pub fn service_count(&self) -> usize {
        self.service_ips.len()
    }

    pub fn replace_services(&mut self, services: Vec<(String, String, Vec<IpAddr>)>) {
        self.services_by_ip.clear();
        self.service_ips.clear();
        for (ns, name, ips) in services {
            self.apply_service(ns, name, ips);
        }
    }
}

/// The Deployment of a ReplicaSet: its name less the `-<pod-template-hash>` suffix.
fn deployment_of(replicaset: &str, template_hash: Option<&str>) -> Option<String> {
    let (base, suffix) = replicaset.rsplit_once('-')?;
    match template_hash {
        Some(h) if h == suffix => Some(base.to_string()),
        Some(_) => None,
        // Without the label, the suffix shape of the hash (alphanumerics) is the hint.
        None => (!suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| base.to_string()),
    }
}

/// The CronJob of a Job: CronJob jobs are named `<cronjob>-<scheduled minute>`.
fn cronjob_of(job: &str) -> Option<String> {
    let (base, suffix) = job.rsplit_once('-')?;
    (suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit())).then(|| base.to_string())
}

/// Converts an API pod to what the resolver keeps.
pub fn pod_meta(pod: &Pod) -> Option<PodMeta> {
    let m = &pod.metadata;
    let uid = m.uid.clone()?;
    let labels: BTreeMap<String, String> = m.labels.clone().unwrap_or_default();
    let mut workload = Vec::new();
    for owner in m.owner_references.iter().flatten() {
        if owner.controller == Some(false) {
            continue;
        }
        match owner.kind.as_str() {
            "ReplicaSet" => {
                workload.push(("k8s.replicaset.name", owner.name.clone()));
                let hash = labels.get("pod-template-hash").map(String::as_str);
                if let Some(d) = deployment_of(&owner.name, hash) {
                    workload.push(("k8s.deployment.name", d));
                }
            }
            "StatefulSet" => workload.push(("k8s.statefulset.name", owner.name.clone())),
            "DaemonSet" => workload.push(("k8s.daemonset.name", owner.name.clone())),
            "Job" => {
                workload.push(("k8s.job.name", owner.name.clone()));
                if let Some(c) = cronjob_of(&owner.name) {
                    workload.push(("k8s.cronjob.name", c));
                }
            }
            "ReplicationController" => {
                workload.push(("k8s.replicationcontroller.name", owner.name.clone()))
            }
            _ => {}
        }
    }
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut containers = HashMap::new();
    if let Some(s) = status {
        for cs in s
            .container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
        {
            if let Some(id) = &cs.container_id {
                // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
                let id = id.rsplit_once("://").map(|(_, i)| i).unwrap_or(id);
                containers.insert(id.to_string(), cs.name.clone());
            }
        }
    }
    Some(PodMeta {
        uid,
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()),
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        labels,
        workload,
        containers,
    })
}

fn service_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client from a kubeconfig file, or inferred (in-cluster service account, then
/// `$KUBECONFIG` / `~/.kube/config`).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// A client for an API server at `url` with no credentials (tests, local proxies such as
/// `kubectl proxy`).
pub fn client_for_url(url: &str) -> Result<Client, KubeError> {
    let uri = url
        .parse()
        .map_err(|e| KubeError::Config(format!("{url}: {e}")))?;
    Client::try_from(kube::Config::new(uri)).map_err(KubeError::Client)
}

/// Backoff between failed watch attempts: doubles from `initial` to 30 s, reset by
/// any successful event.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Watches the pods of `node` until the resolver is dropped elsewhere or the task aborted.
pub async fn watch_pods(client: Client, node: String, resolver: Arc<Resolver>, backoff: Backoff) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).boxed();
    let mut buffer: Vec<PodMeta> = Vec::new();
    let mut delay = backoff.initial;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                delay = backoff.initial;
                resolver.kube_event();
                match event {
                    Event::Init => buffer.clear(),
                    Event::InitApply(p) => buffer.extend(pod_meta(&p)),
                    Event::InitDone => {
                        resolver.update_cluster(|s| s.replace_pods(std::mem::take(&mut buffer)));
                        resolver.kube_synced("pods");
                    }
                    Event::Apply(p) => {
                        if let Some(m) = pod_meta(&p) {
                            resolver.update_cluster(|s| s.apply_pod(m));
                        }
                    }
                    Event::Delete(p) => {
                        if let Some(uid) = p.metadata.uid {
                            resolver.update_cluster(|s| s.delete_pod(&uid));
                        }
                    }
                }
            }
            Err(e) => {
                resolver.kube_error("pods", &e);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}

/// Watches every service's cluster IPs (peer identity).
pub async fn watch_services(client: Client, resolver: Arc<Resolver>, backoff: Backoff) {
    let api: Api<Service> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut buffer = Vec::new();
    let mut delay = backoff.initial;
    let key = |s: &Service| {
        (
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
        )
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                delay = backoff.initial;
                resolver.kube_event();
                match event {
                    Event::Init => buffer.clear(),
                    Event::InitApply(s) => {
                        let (ns, name) = key(&s);
                        buffer.push((ns, name, service_ips(&s)));
                    }
                    Event::InitDone => {
                        resolver
                            .update_cluster(|st| st.replace_services(std::mem::take(&mut buffer)));
                        resolver.kube_synced("services");
                    }
                    Event::Apply(s) => {
                        let (ns, name) = key(&s);
                        let ips = service_ips(&s);
                        resolver.update_cluster(|st| st.apply_service(ns, name, ips));
                    }
                    Event::Delete(s) => {
                        let (ns, name) = key(&s);
                        resolver.update_cluster(|st| st.delete_service(&ns, &name));
                    }
                }
            }
            Err(e) => {
                resolver.kube_error("services", &e);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert_eq!(
            deployment_of("checkout-7d9f8b6c5", Some("7d9f8b6c5")).as_deref(),
            Some("checkout")
        );
        assert_eq!(deployment_of("checkout-7d9f8b6c5", Some("other")), None);
        assert_eq!(
            deployment_of("my-app-5c6d", None).as_deref(),
            Some("my-app")
        );
        assert_eq!(deployment_of("noseparator", None), None);
        assert_eq!(cronjob_of("backup-28930215").as_deref(), Some("backup"));
        assert_eq!(cronjob_of("migrate-x1"), None);
    }

    #[test]
    fn pod_from_api_json() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "name": "web", "uid": "s-1", "controller": true}]
            },
            "spec": {"nodeName": "n1", "hostNetwork": false, "containers": [{"name": "c"}]},
            "status": {"podIP": "10.1.2.3", "containerStatuses": [{
                "name": "c", "containerID": "containerd://abc", "image": "i", "imageID": "",
                "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        let m = pod_meta(&pod).unwrap();
        assert_eq!(
            m.workload,
            vec![("k8s.statefulset.name", "web".to_string())]
        );
        assert_eq!(m.ip, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(m.containers.get("abc").map(String::as_str), Some("c"));
        let mut store = ClusterStore::default();
        store.apply_pod(m.clone());
        assert_eq!(store.pod_by_ip.len(), 1);
        store.apply_pod(PodMeta {
            ip: Some("10.9.9.9".parse().unwrap()),
            ..m
        });
        assert_eq!(store.pod_by_ip.len(), 1, "old IP dropped on update");
        store.delete_pod("u-1");
        assert!(store.pod_by_ip.is_empty() && store.pods.is_empty());
        store.apply_service(
            "ns".into(),
            "db".into(),
            vec!["10.96.0.10".parse().unwrap()],
        );
        store.apply_service(
            "ns".into(),
            "db".into(),
            vec!["10.96.0.11".parse().unwrap()],
        );
        assert_eq!(store.services_by_ip.len(), 1);
        store.delete_service("ns", "db");
        assert!(store.services_by_ip.is_empty());
    }
}
