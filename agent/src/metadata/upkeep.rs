//! The resolver's background tasks — the eviction timer and the Kubernetes API watch —
//! and applying new [`MetadataOptions`] to a running agent: the resolver takes what it
//! uses itself, the watch is restarted when its client or node changed, the timer
//! follows the new period. Nothing here can fail the agent: what cannot start is
//! counted in the resolver's stats.

use std::{sync::Arc, time::Duration};

use tokio::{runtime::Handle, sync::watch, task::JoinHandle};

use super::{kube::Backoff, MetadataOptions, Resolver};

/// The eviction pass never runs more often than this.
pub const MIN_REVALIDATE: Duration = Duration::from_millis(100);

fn period(options: &MetadataOptions) -> Duration {
    Duration::from_millis(options.revalidate_ms).max(MIN_REVALIDATE)
}

pub struct MetadataTasks {
    resolver: Arc<Resolver>,
    /// Where the tasks run: options may be applied from outside the runtime.
    runtime: Handle,
    shutdown: watch::Receiver<bool>,
    /// The eviction timer reads its period from here, so a change needs no restart.
    period: watch::Sender<Duration>,
    eviction: Option<JoinHandle<()>>,
    kube: Option<JoinHandle<()>>,
}

impl MetadataTasks {
    /// Starts what the resolver's options ask for; must run inside tokio.
    pub fn start(resolver: Arc<Resolver>, shutdown: watch::Receiver<bool>) -> MetadataTasks {
        let options = resolver.options();
        let (period_tx, _) = watch::channel(period(&options));
        let mut tasks = MetadataTasks {
            resolver,
            runtime: Handle::current(),
            shutdown,
            period: period_tx,
            eviction: None,
            kube: None,
        };
        tasks.reconcile(&options, true);
        tasks
    }

    /// Applies new options live. Returns the keys that could not be applied live
    /// (none today: every key of [`MetadataOptions`] is).
    pub fn apply(&mut self, options: MetadataOptions) -> Vec<&'static str> {
        let old = self.resolver.options();
        let kube_changed = old.enabled != options.enabled
            || old.kube_api != options.kube_api
            || old.kubeconfig != options.kubeconfig
            || old.node_name != options.node_name;
        self.resolver.set_options(options.clone());
        self.period.send_replace(period(&options));
        self.reconcile(&options, kube_changed);
        Vec::new()
    }

    /// Starts or stops the tasks to match `options`; the watch is restarted when
    /// `restart_kube`.
    fn reconcile(&mut self, options: &MetadataOptions, restart_kube: bool) {
        if !options.enabled {
            if self.kube.is_some() {
                self.resolver.update_cluster(|c| *c = Default::default());
            }
            self.stop();
            return;
        }
        if self.eviction.as_ref().is_none_or(|t| t.is_finished()) {
            self.eviction = Some(self.spawn_eviction());
        }
        if restart_kube {
            if let Some(t) = self.kube.take() {
                t.abort();
                // Pods of another node or cluster would otherwise stay until the new
                // watch lists; without a watch they would never go.
                self.resolver.update_cluster(|c| *c = Default::default());
            }
            if options.kube_api {
                let _guard = self.runtime.enter();
                self.kube = Some(self.resolver.spawn_kube_watch(None, Backoff::default()));
            }
        }
    }

    fn spawn_eviction(&self) -> JoinHandle<()> {
        let r = self.resolver.clone();
        let mut shutdown = self.shutdown.clone();
        let mut period = self.period.subscribe();
        self.runtime.spawn(async move {
            let mut every = *period.borrow_and_update();
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let r = r.clone();
                        // /proc and cgroupfs reads block: off the async workers.
                        let _ = tokio::task::spawn_blocking(move || r.maintain()).await;
                    }
                    changed = period.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let new = *period.borrow_and_update();
                        if new != every {
                            // The next pass one new period from now.
                            every = new;
                            tick = tokio::time::interval_at(
                                tokio::time::Instant::now() + every,
                                every,
                            );
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
        })
    }

    pub fn kube_watch_running(&self) -> bool {
        self.kube.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops every task (the agent is stopping, or identity was turned off).
    pub fn stop(&mut self) {
        for t in [self.eviction.take(), self.kube.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
    }
}
