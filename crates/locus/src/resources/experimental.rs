//! Fields of the Gateway API's experimental channel that the gateway-api crate's standard
//! types do not carry: HTTPRoute `rules[].retry` (GEP-1731). They are taken out of the
//! document before it is read as the standard type, and read here with the same field-path
//! errors and unknown-field warnings as every other field.

use serde::Deserialize;
use serde_json::Value;

use super::{typed_at, ConfigError, DocRef, Origin};

/// HTTPRoute `rules[].retry`, as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRetry {
    /// Response codes that are retried (400–599).
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub attempts: Option<u32>,
    /// The least time between two attempts (a Gateway API duration).
    pub backoff: Option<String>,
}

/// Takes each rule's `retry` out of an HTTPRoute document: one entry per rule, `None` where a
/// rule has none.
pub(super) fn take_retries(
    origin: &Origin,
    doc: &DocRef,
    value: &mut Value,
    warnings: &mut Vec<String>,
) -> Result<Vec<Option<HttpRouteRetry>>, ConfigError> {
    let Some(Value::Array(rules)) = value.pointer_mut("/spec/rules") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter_mut().enumerate() {
        let retry = match rule {
            Value::Object(rule) => rule.remove("retry"),
            _ => None,
        };
        out.push(match retry {
            None | Some(Value::Null) => None,
            Some(v) => Some(typed_at(
                origin,
                doc,
                &format!("spec.rules[{i}].retry"),
                v,
                warnings,
            )?),
        });
    }
    Ok(out)
}
