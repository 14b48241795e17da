//! Change events of the configuration file. The directory is watched, not the file: a
//! Kubernetes ConfigMap update swaps a `..data` symlink atomically and editors write a new
//! file and rename it over the old one, and a watch on the old file would see neither.

use std::{path::Path, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Writers produce several events per change (create, write, rename, chmod): they are
/// folded into one reload once the directory has been quiet this long.
const SETTLE: Duration = Duration::from_millis(100);

pub struct FileWatch {
    // Dropping the watcher ends the watch.
    _watcher: notify::RecommendedWatcher,
    events: Arc<Notify>,
    /// A change was seen and is settling (kept across a cancelled `changed`).
    pending: bool,
}

impl FileWatch {
    pub fn new(file: &Path) -> Result<FileWatch, notify::Error> {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let events = Arc::new(Notify::new());
        let tx = events.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Errors (e.g. an overflowed inotify queue) may hide a change: reload to be sure.
                let relevant = match res {
                    // Reads (ours included) change nothing; a close after writing does.
                    Ok(e) => match e.kind {
                        notify::EventKind::Access(notify::event::AccessKind::Close(
                            notify::event::AccessMode::Write,
                        )) => true,
                        notify::EventKind::Access(_) => false,
                        _ => true,
                    },
                    Err(_) => true,
                };
                if relevant {
                    tx.notify_one();
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(FileWatch {
            _watcher: watcher,
            events,
            pending: false,
        })
    }

    /// Resolves once the directory changed and then stayed quiet for [`SETTLE`].
    /// Cancel-safe: a change seen by a call that was dropped is returned by the next one.
    pub async fn changed(&mut self) {
        if !self.pending {
            self.events.notified().await;
            self.pending = true;
        }
        loop {
            tokio::select! {
                _ = self.events.notified() => continue,
                _ = tokio::time::sleep(SETTLE) => break,
            }
        }
        self.pending = false;
    }
}
