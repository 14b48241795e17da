//! Addresses that lookups resolved, kept briefly per process (and per cgroup, for a
//! container whose resolving and connecting processes differ) so that a later TCP or
//! TLS record to one of them can name the host it was looked up as (`remote_name`).
//!
//! Written by the DNS family for every answer with addresses, read for each active
//! connection record: a lookup is one short lock, and an empty store (no DNS family, no
//! lookups) costs one atomic load.
//!
//! The answer and the connect that follows it reach the agent through different rings
//! and tasks, so the connect can be read first. The DNS family says how far it has
//! processed its ring ([`ResolvedNames::applied_through`]); a connect newer than that
//! which finds no name asks the DNS reader to drain now and waits until the DNS side
//! has caught up with it (at most [`CATCH_UP_WAIT`]), then looks again. Catch-ups are
//! at most one per 100 ms: a connect read in a storm soon after one may still go
//! unnamed.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use serde::Serialize;

/// How long a resolved address names its host for the process that looked it up.
pub const NAME_TTL_NS: u64 = 60 * 1_000_000_000;
/// Entries at most; beyond it expired entries are swept, then the oldest half dropped
/// (counted in `evicted`).
pub const MAX_NAMES: usize = 16_384;
/// How long a connect waits for the DNS side to catch up with it.
pub const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(10);
/// Catch-ups at most one per this time (of the connects' clock): in a connect storm the
/// TCP reader keeps reading records newer than the last catch-up, and each costs a
/// thread hand-off.
const CATCH_UP_EVERY_NS: u64 = 100_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Pid(u32),
    Cgroup(u64),
}

struct Entry {
    name: Arc<str>,
    expires_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NamesStats {
    pub cached: u64,
    /// Entries dropped before they expired because the store was full.
    pub evicted: u64,
    /// Connection records that were given a name.
    pub named: u64,
    /// Connects that found no name and waited for the DNS side to catch up.
    pub waited: u64,
    /// Of those, the ones named once it had.
    pub named_after_wait: u64,
    /// Of those, the ones whose wait ran out ([`CATCH_UP_WAIT`]).
    pub wait_timeouts: u64,
}

#[derive(Default)]
pub struct ResolvedNames {
    entries: Mutex<HashMap<(Scope, IpAddr), Entry>>,
    len: AtomicUsize,
    evicted: AtomicU64,
    named: AtomicU64,
    /// Asks the DNS ring's reader to drain now; set while the DNS family runs.
    drain_dns: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    /// Every DNS message committed before this time (Unix ns) has been processed and
    /// its names inserted.
    applied_through: Mutex<u64>,
    /// Its value, read without the lock on every unnamed connect.
    applied_ns: AtomicU64,
    caught_up: std::sync::Condvar,
    /// The time of the connect that made the last catch-up (Unix ns).
    last_catch_up_ns: AtomicU64,
    waited: AtomicU64,
    named_after_wait: AtomicU64,
    wait_timeouts: AtomicU64,
}

impl ResolvedNames {
    pub fn new() -> Arc<ResolvedNames> {
        Arc::new(ResolvedNames::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Scope, IpAddr), Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that `name` resolved to `addrs` for this process and cgroup at `now_ns`
    /// (Unix ns, the records' clock).
    pub fn insert(
        &self,
        pid: Option<u32>,
        cgroup_id: Option<u64>,
        name: &str,
        addrs: &[IpAddr],
        now_ns: u64,
    ) {
        if addrs.is_empty() || (pid.is_none() && cgroup_id.is_none()) {
            return;
        }
        let name: Arc<str> = name.into();
        let expires_ns = now_ns.saturating_add(NAME_TTL_NS);
        let scopes = pid
            .map(Scope::Pid)
            .into_iter()
            .chain(cgroup_id.map(Scope::Cgroup));
        let mut entries = self.lock();
        if entries.len() + 2 * addrs.len() > MAX_NAMES {
            entries.retain(|_, e| e.expires_ns > now_ns);
            if entries.len() + 2 * addrs.len() > MAX_NAMES {
                // Still full of live names: drop those closest to expiry.
                let mut ends: Vec<u64> = entries.values().map(|e| e.expires_ns).collect();
                ends.sort_unstable();
                let cut = ends[ends.len() / 2];
                let before = entries.len();
                entries.retain(|_, e| e.expires_ns > cut);
                self.evicted
                    .fetch_add((before - entries.len()) as u64, Ordering::Relaxed);
            }
        }
        for scope in scopes {
            for &ip in addrs {
                entries.insert(
                    (scope, ip),
                    Entry {
                        name: name.clone(),
                        expires_ns,
                    },
                );
            }
        }
        self.len.store(entries.len(), Ordering::Relaxed);
    }

    /// The name `ip` was looked up as by this process (or else by its cgroup), if that
    /// lookup is younger than [`NAME_TTL_NS`] at `now_ns`.
    pub fn lookup(
        &self,
        pid: Option<u32>,
        cgroup_id: Option<u64>,
        ip: IpAddr,
        now_ns: u64,
    ) -> Option<String> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let entries = self.lock();
        let found = pid
            .map(Scope::Pid)
            .into_iter()
            .chain(cgroup_id.map(Scope::Cgroup))
            .find_map(|scope| entries.get(&(scope, ip)))
            .filter(|e| e.expires_ns > now_ns)
            .map(|e| e.name.to_string());
        if found.is_some() {
            self.named.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The DNS family runs: `drain` makes its ring's reader drain now.
    pub fn attach_dns(&self, drain: Arc<tokio::sync::Notify>) {
        let _ = self.drain_dns.set(drain);
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, u64> {
        self.applied_through
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The DNS task has processed every message its reader read in a drain that started
    /// at `through_ns` (Unix ns).
    pub fn applied_through(&self, through_ns: u64) {
        let mut applied = self.applied();
        if through_ns > *applied {
            *applied = through_ns;
            self.applied_ns.store(through_ns, Ordering::Relaxed);
            self.caught_up.notify_all();
        }
    }

    /// [`lookup`](Self::lookup) for a connect at `now_ns`: when nothing names `ip` and
    /// the DNS side has not yet processed what came before the connect, has it drain
    /// and waits for it (at most [`CATCH_UP_WAIT`]), then looks again.
    pub fn lookup_after_answers(
        &self,
        pid: Option<u32>,
        cgroup_id: Option<u64>,
        ip: IpAddr,
        now_ns: u64,
    ) -> Option<String> {
        let found = self.lookup(pid, cgroup_id, ip, now_ns);
        if found.is_some() {
            return found;
        }
        let drain = self.drain_dns.get()?;
        if self.applied_ns.load(Ordering::Relaxed) >= now_ns {
            return None;
        }
        let last = self.last_catch_up_ns.load(Ordering::Relaxed);
        if last != 0 && now_ns.saturating_sub(last) < CATCH_UP_EVERY_NS {
            return None;
        }
        self.last_catch_up_ns.store(now_ns, Ordering::Relaxed);
        let applied = self.applied();
        drain.notify_one();
        self.waited.fetch_add(1, Ordering::Relaxed);
        let wait = || {
            self.caught_up
                .wait_timeout_while(applied, CATCH_UP_WAIT, |a| *a < now_ns)
                .unwrap_or_else(|p| p.into_inner())
        };
        // The DNS reader and task must run meanwhile: on a multi-thread runtime this
        // worker's other tasks (the DNS reader just woken is one) move to another thread.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let (applied, timeout) = if multi_thread {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        };
        drop(applied);
        if timeout.timed_out() {
            self.wait_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        let found = self.lookup(pid, cgroup_id, ip, now_ns);
        if found.is_some() {
            self.named_after_wait.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    pub fn stats(&self) -> NamesStats {
        NamesStats {
            cached: self.len.load(Ordering::Relaxed) as u64,
            evicted: self.evicted.load(Ordering::Relaxed),
            named: self.named.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
            named_after_wait: self.named_after_wait.load(Ordering::Relaxed),
            wait_timeouts: self.wait_timeouts.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_connect_after_a_lookup_is_named_by_pid_then_by_cgroup_until_the_ttl() {
        let names = ResolvedNames::new();
        assert_eq!(names.lookup(Some(1), None, ip("10.0.3.7"), T0), None);
        names.insert(
            Some(1),
            Some(77),
            "payments.shop.svc.cluster.local",
            &[ip("10.0.3.7"), ip("fd00::7")],
            T0,
        );
        assert_eq!(
            names
                .lookup(Some(1), None, ip("10.0.3.7"), T0 + 1)
                .as_deref(),
            Some("payments.shop.svc.cluster.local")
        );
        assert!(names.lookup(Some(1), None, ip("fd00::7"), T0 + 1).is_some());
        // Another process of the same container.
        assert!(names
            .lookup(Some(2), Some(77), ip("10.0.3.7"), T0 + 1)
            .is_some());
        // Another process elsewhere, another address, or too late: no name.
        assert!(names
            .lookup(Some(2), Some(78), ip("10.0.3.7"), T0 + 1)
            .is_none());
        assert!(names
            .lookup(Some(1), None, ip("10.0.3.8"), T0 + 1)
            .is_none());
        assert!(names
            .lookup(Some(1), None, ip("10.0.3.7"), T0 + NAME_TTL_NS)
            .is_none());
        assert_eq!(names.stats().named, 3);
    }

    #[test]
    fn the_store_is_bounded_and_counts_what_it_drops() {
        let names = ResolvedNames::new();
        for i in 0..(MAX_NAMES as u32) {
            let addr = IpAddr::from(i.to_be_bytes());
            names.insert(Some(i), None, "n.test", &[addr], T0 + i as u64);
        }
        let s = names.stats();
        assert!(s.cached as usize <= MAX_NAMES, "{s:?}");
        assert!(s.evicted > 0, "{s:?}");
        // The newest survive.
        let last = MAX_NAMES as u32 - 1;
        assert!(names
            .lookup(
                Some(last),
                None,
                IpAddr::from(last.to_be_bytes()),
                T0 + last as u64
            )
            .is_some());
        // Expired entries go first, without counting as evictions.
        let later = T0 + 2 * NAME_TTL_NS;
        let before = names.stats();
        for i in 0..(MAX_NAMES - before.cached as usize + 1) as u32 {
            let addr = IpAddr::from((i | 0x8000_0000).to_be_bytes());
            names.insert(Some(i), None, "m.test", &[addr], later);
        }
        let after = names.stats();
        assert_eq!(after.evicted, before.evicted, "{after:?}");
        assert!(after.cached as usize <= MAX_NAMES / 2 + 2, "{after:?}");
    }

    #[test]
    fn a_connect_newer_than_the_dns_side_waits_for_it_to_catch_up() {
        let names = ResolvedNames::new();
        // No DNS family: nothing to wait for.
        assert_eq!(
            names.lookup_after_answers(Some(1), None, ip("10.0.3.7"), T0),
            None
        );
        let drain = Arc::new(tokio::sync::Notify::new());
        names.attach_dns(drain.clone());
        names.applied_through(T0);
        // Older than what the DNS side processed: no wait.
        assert_eq!(
            names.lookup_after_answers(Some(1), None, ip("10.0.3.7"), T0),
            None
        );
        assert_eq!(names.stats().waited, 0);
        // Newer: the DNS reader is asked to drain; its answer lands while the connect waits.
        let dns_side = {
            let names = names.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(drain.notified());
                names.insert(Some(1), None, "svc.test", &[ip("10.0.3.7")], T0 + 5);
                names.applied_through(T0 + 20);
            })
        };
        assert_eq!(
            names
                .lookup_after_answers(Some(1), None, ip("10.0.3.7"), T0 + 10)
                .as_deref(),
            Some("svc.test")
        );
        dns_side.join().unwrap();
        let s = names.stats();
        assert_eq!((s.waited, s.named_after_wait, s.wait_timeouts), (1, 1, 0));
        // Within 100 ms of a catch-up, no other.
        assert_eq!(
            names.lookup_after_answers(Some(2), None, ip("10.9.9.9"), T0 + 30),
            None
        );
        assert_eq!(names.stats().waited, 1);
        // A DNS side that does not answer: the wait is bounded, and counted.
        let later = T0 + 10 + CATCH_UP_EVERY_NS;
        let start = std::time::Instant::now();
        assert_eq!(
            names.lookup_after_answers(Some(2), None, ip("10.9.9.9"), later),
            None
        );
        assert!(start.elapsed() >= CATCH_UP_WAIT);
        assert_eq!(names.stats().wait_timeouts, 1);
    }
}
