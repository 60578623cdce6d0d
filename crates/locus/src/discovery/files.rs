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

/// What the files looked like at a moment; take it *before* loading them, so a change made
/// while they load is still seen as a change afterwards.
#[derive(PartialEq, Eq, Debug)]
pub enum Fingerprint {
    /// Path, length, modification time and inode: an atomic replace (write + rename, as
    /// editors, `kubectl cp` and ConfigMap volumes do) changes the inode even when it lands in
    /// the same coarse timestamp tick with the same length.
    Files(Vec<(PathBuf, u64, Option<SystemTime>, u64)>),
    Error(String),
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ino() ^ (m.ctime_nsec() as u64).rotate_left(32)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    match collect_files(paths) {
        Err(e) => Fingerprint::Error(e.to_string()),
        Ok(files) => Fingerprint::Files(
            files
                .into_iter()
                .map(|f| {
                    let meta = std::fs::metadata(&f).ok();
                    let len = meta.as_ref().map_or(0, |m| m.len());
                    let inode = meta.as_ref().map_or(0, inode);
                    let modified = meta.and_then(|m| m.modified().ok());
                    (f, len, modified, inode)
                })
                .collect(),
        ),
    }
}

/// Loads `paths` once and applies them. Returns the error text when they are invalid.
pub async fn load_once(gateway: &Gateway, paths: &[PathBuf]) -> Result<u64, String> {
    match load_paths(paths) {
        Ok(set) => gateway.apply(set).await,
        Err(e) => Err(gateway.reject_config_error(&e)),
    }
}

/// Watches `paths` forever, applying every change since `last` (from [`fingerprint`], taken
/// before the configuration in force was loaded).
pub async fn watch(
    gateway: Arc<Gateway>,
    paths: Vec<PathBuf>,
    every: Duration,
    mut last: Fingerprint,
) {
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
