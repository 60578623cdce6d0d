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
    let stdin = Path::new("-");
    let mut set = ResourceSet::default();
    // `-`: manifests on standard input (`helm template … | locus check -f -`), read once.
    if paths.iter().any(|p| p == stdin) {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| ConfigError::file(stdin, format!("cannot read standard input: {e}")))?;
        parse_text(stdin, &text, &mut set)?;
    }
    let others: Vec<PathBuf> = paths.iter().filter(|p| *p != stdin).cloned().collect();
    let files = if others.is_empty() {
        Vec::new()
    } else {
        collect_files(&others)?
    };
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::file(file, format!("cannot read: {e}")))?;
        parse_text(file, &text, &mut set)?;
    }
    set.files = files;
    Ok(set)
}

/// For `serve -f -`: standard input read once into a file that stays for the life of the
/// process (hold the returned handle), so reloads see the same manifests instead of an empty
/// stream.
pub fn stdin_to_file(
    paths: Vec<PathBuf>,
) -> std::io::Result<(Vec<PathBuf>, Option<tempfile::NamedTempFile>)> {
    if !paths.iter().any(|p| p == Path::new("-")) {
        return Ok((paths, None));
    }
    let mut file = tempfile::Builder::new()
        .prefix("locus-stdin-")
        .suffix(".yaml")
        .tempfile()?;
    std::io::copy(&mut std::io::stdin(), &mut file)?;
    let path = file.path().to_owned();
    let paths = paths
        .into_iter()
        .map(|p| if p == Path::new("-") { path.clone() } else { p })
        .collect();
    Ok((paths, Some(file)))
}
