//! Configuration errors that say where the problem is.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Which document of a file: its kind and namespace/name when they could be read, always its
/// position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocRef {
    pub index: usize,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl DocRef {
    pub fn index_only(index: usize) -> Self {
        DocRef {
            index,
            kind: None,
            namespace: None,
            name: None,
        }
    }

    pub fn from_value(index: usize, value: &Value) -> Self {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let meta = value.get("metadata");
        let kind = s(value.get("kind"));
        let cluster_scoped = matches!(
            kind.as_deref(),
            Some(
                "Node"
                    | "Namespace"
                    | "GatewayClass"
                    | "List"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "CustomResourceDefinition"
                    | "PersistentVolume"
                    | "StorageClass"
                    | "PriorityClass"
            )
        );
        // Namespaced objects without a namespace land in `default`, as with kubectl.
        let namespace = s(meta.and_then(|m| m.get("namespace")))
            .or_else(|| (!cluster_scoped).then(|| "default".to_owned()));
        DocRef {
            index,
            kind,
            namespace,
            name: s(meta.and_then(|m| m.get("name"))),
        }
    }

    /// `namespace/name`, `name`, or `#index`.
    pub fn name_or_index(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.clone(),
            _ => format!("#{}", self.index),
        }
    }
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(_)) => write!(f, " ({kind} {})", self.name_or_index()),
            (Some(kind), None) => write!(f, " ({kind})"),
            _ => Ok(()),
        }
    }
}

/// A manifest Locus refuses, with the file, the document and the field path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub doc: Option<Box<DocRef>>,
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, doc: DocRef, field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            doc: Some(Box::new(doc)),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// An error about a file as a whole (unreadable, missing).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            doc: None,
            field: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = &self.doc {
            write!(f, ": {doc}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}
