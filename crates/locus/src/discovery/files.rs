//! `locus serve -f PATH`: manifests from files and directories, reloaded when they change.
//!
//! Polls file metadata (size, modification time) and the directory listings a few times a
//! second rather than using inotify: it sees editors that replace files, ConfigMap volume
//! symlink swaps and network filesystems alike, and costs a handful of `stat` calls.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::gateway::Gateway;
use crate::resources::{collect_files, load_paths};

/// How often files are checked; changes apply within about this long plus the reload.
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);

#[derive(PartialEq, Eq, Debug)]
enum Fingerprint {
    Files(Vec<(PathBuf, u64, Option<SystemTime>)>),
    Error(String),
}

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    match collect_files(paths) {
        Err(e) => Fingerprint::Error(e.to_string()),
        Ok(files) => Fingerprint::Files(
            files
                .into_iter()
                .map(|f| {
                    let meta = std::fs::metadata(&f).ok();
                    let len = meta.as_ref().map_or(0, |m| m.len());
                    let modified = meta.and_then(|m| m.modified().ok());
                    (f, len, modified)
                })
                .collect(),
        ),
    }
}

/// Loads `paths` once and applies them. Returns the error text when they are invalid.
pub async fn load_once(gateway: &Gateway, paths: &[PathBuf]) -> Result<u64, String> {
    match load_paths(paths) {
        Ok(set) => gateway.apply(&set).await,
        Err(e) => Err(gateway.reject_config_error(&e)),
    }
}

/// Watches `paths` forever, applying every change.
pub async fn watch(gateway: Arc<Gateway>, paths: Vec<PathBuf>, every: Duration) {
    let mut last = fingerprint(&paths);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = fingerprint(&paths);
        if now == last {
            continue;
        }
        last = now;
        tracing::info!("manifests changed; reloading");
        let _ = load_once(&gateway, &paths).await;
    }
}
