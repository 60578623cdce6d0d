//! Reading manifest files and directories.

use std::path::{Path, PathBuf};

use super::{parse_text, ConfigError, ResourceSet};

/// Whether a file in a directory is a manifest (`kubectl apply -f DIR` takes these).
fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The files the given paths stand for: a file is itself; a directory is its manifests
/// (not recursive, as kubectl without `-R`), sorted by name so loading is deterministic.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| ConfigError::file(path, format!("cannot list directory: {e}")))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_manifest(p))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Reads and parses every manifest under `paths`.
pub fn load_paths(paths: &[PathBuf]) -> Result<ResourceSet, ConfigError> {
    let files = collect_files(paths)?;
    let mut set = ResourceSet::default();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::file(file, format!("cannot read: {e}")))?;
        parse_text(file, &text, &mut set)?;
    }
    set.files = files;
    Ok(set)
}
