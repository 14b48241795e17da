//! What a new tree changes, and which of those changes a running agent can take live.

use serde_json::Value;

use super::Config;

/// Keys whose value is fixed when the probes are loaded (map and ring sizes, which
/// programs are attached, where maps are pinned) or that shape a sink set up at start.
/// A change to one of these (or to a key below it) waits for a restart. Each probe
/// family lists its own in its [`crate::family::Descriptor`].
pub const RESTART_KEYS: &[&str] = &[
    "agent.output",
    "agent.pin",
    "agent.pin_dir",
    "agent.channel_capacity",
    "agent.poll_interval",
    "agent.wakeup_bytes",
    "metadata.enabled",
    // The API's socket is bound, and its history and buffers sized, at start.
    "api.enabled",
    "api.socket",
    "api.allowed_group",
    "api.history_records",
    "api.history_bytes",
    "api.client_buffer",
    "api.max_clients",
    // The listener is bound once, at start.
    "prometheus",
    // The RCA sink is started with the agent; its other keys apply live.
    "rca.enabled",
];

/// The agent's and the sinks' restart keys, then every probe family's.
fn restart_keys() -> impl Iterator<Item = &'static &'static str> {
    let families = crate::family::REGISTERED
        .iter()
        .flat_map(|f| f.restart_keys);
    RESTART_KEYS.iter().chain(families)
}

pub fn needs_restart(key: &str) -> bool {
    restart_keys().any(|r| {
        key == *r || key.starts_with(&format!("{r}.")) || key.starts_with(&format!("{r}["))
    })
}

/// How a new tree is taken by a running agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Changed keys applied live.
    pub live: Vec<String>,
    /// Changed keys that keep their running value until a restart.
    pub restart: Vec<String>,
    /// The tree to run with: the new one, with every restart key at its running value.
    pub effective: Config,
}

impl Plan {
    pub fn new(running: &Config, wanted: &Config) -> Plan {
        let (old, new) = (to_value(running), to_value(wanted));
        let mut keys = Vec::new();
        leaves_changed("", &old, &new, &mut keys);
        let (restart, live): (Vec<String>, Vec<String>) =
            keys.into_iter().partition(|k| needs_restart(k));
        let mut effective = new;
        for key in restart_keys() {
            if let (Some(slot), Some(v)) = (pointer_mut(&mut effective, key), pointer(&old, key)) {
                *slot = v.clone();
            }
        }
        // Both values came from valid trees of the same type: this cannot fail.
        let effective = serde_json::from_value(effective).unwrap_or_else(|_| running.clone());
        Plan {
            live,
            restart,
            effective,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }
}

/// Every leaf key whose value differs, e.g. `syscalls.watch_paths` or `export.endpoint`
/// (lists are compared whole).
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    leaves_changed("", &to_value(a), &to_value(b), &mut keys);
    keys
}

fn to_value(c: &Config) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn leaves_changed(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves_changed(
                    &path,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

fn pointer<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.pointer(&format!("/{}", key.replace('.', "/")))
}

fn pointer_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    v.pointer_mut(&format!("/{}", key.replace('.', "/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_restart_keys_are_told_apart() {
        let old = Config::default();
        let mut new = old.clone();
        new.syscalls.watch_paths.push("/srv/secret".into());
        new.tcp.ring_bytes *= 2;
        new.export.interval = std::time::Duration::from_secs(3);
        let plan = Plan::new(&old, &new);
        assert_eq!(plan.live, ["export.interval", "syscalls.watch_paths"]);
        assert_eq!(plan.restart, ["tcp.ring_bytes"]);
        assert_eq!(plan.effective.tcp.ring_bytes, old.tcp.ring_bytes);
        assert_eq!(
            plan.effective.syscalls.watch_paths,
            new.syscalls.watch_paths
        );
        assert!(Plan::new(&old, &old).is_empty());
    }

    #[test]
    fn rca_tuning_is_live_and_enabling_it_waits_for_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.rca.enabled = false;
        new.rca.window = std::time::Duration::from_secs(60);
        let plan = Plan::new(&old, &new);
        assert_eq!(plan.live, ["rca.window"]);
        assert_eq!(plan.restart, ["rca.enabled"]);
        assert!(plan.effective.rca.enabled);
    }

    #[test]
    fn restart_prefixes_match_whole_keys() {
        assert!(needs_restart("tcp.ring_bytes"));
        assert!(!needs_restart("tcp.ring_bytes_extra"));
        assert!(!needs_restart("syscalls.security_extra"));
    }
}
