//! Notices writes to the config file. Watches the file's directory (editors and config managers
//! replace files by rename), debounces bursts, and skips rewrites that leave the content as it was.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

const DEBOUNCE: Duration = Duration::from_millis(150);

pub struct FileWatch {
    path: PathBuf,
    events: Option<mpsc::UnboundedReceiver<()>>,
    last: Option<Vec<u8>>,
    _watcher: Option<RecommendedWatcher>,
}

impl FileWatch {
    /// Start watching; if the watch cannot be set up, only SIGHUP reloads (logged).
    pub fn new(path: &Path) -> FileWatch {
        let (tx, rx) = mpsc::unbounded_channel();
        let name = path.file_name().map(|n| n.to_os_string());
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
                {
                    let _ = tx.send(());
                }
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let (watcher, events) = match watcher {
            Ok(w) => (Some(w), Some(rx)),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config file; reload with SIGHUP");
                (None, None)
            }
        };
        FileWatch {
            path: path.to_path_buf(),
            events,
            last: std::fs::read(path).ok(),
            _watcher: watcher,
        }
    }

    /// Resolves when the file's content has changed.
    pub async fn changed(&mut self) {
        loop {
            let Some(events) = self.events.as_mut() else {
                return std::future::pending().await;
            };
            if events.recv().await.is_none() {
                self.events = None;
                continue;
            }
            // Let a burst of writes settle, then drain what queued up meanwhile.
            tokio::time::sleep(DEBOUNCE).await;
            while events.try_recv().is_ok() {}
            let now = std::fs::read(&self.path).ok();
            if now.is_some() && now != self.last {
                self.last = now;
                return;
            }
        }
    }
}
