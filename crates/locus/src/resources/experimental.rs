//! Fields of the Gateway API's experimental channel that the gateway-api crate's standard
//! types do not carry: HTTPRoute `rules[].retry` (GEP-1731) and `rules[].sessionPersistence`
//! (GEP-1619). They are taken out of the document before it is read as the standard type, and
//! read here with the same field-path errors and unknown-field warnings as every other field.

use serde::Deserialize;
use serde_json::Value;

use super::{typed_at, ConfigError, DocRef, Origin};

/// The experimental fields of one HTTPRoute rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleExtras {
    pub retry: Option<HttpRouteRetry>,
    pub session_persistence: Option<SessionPersistence>,
}

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

/// HTTPRoute `rules[].sessionPersistence`, as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionPersistence {
    pub session_name: Option<String>,
    pub absolute_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// `Cookie` (the default) or `Header`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub cookie_config: Option<CookieConfig>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CookieConfig {
    /// `Session` (the default: no Max-Age) or `Permanent`.
    pub lifetime_type: Option<String>,
}

/// Takes each rule's experimental fields out of an HTTPRoute document: one entry per rule.
pub(super) fn take_rule_extras(
    origin: &Origin,
    doc: &DocRef,
    value: &mut Value,
    warnings: &mut Vec<String>,
) -> Result<Vec<RuleExtras>, ConfigError> {
    let Some(Value::Array(rules)) = value.pointer_mut("/spec/rules") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter_mut().enumerate() {
        let Value::Object(rule) = rule else {
            out.push(RuleExtras::default());
            continue;
        };
        let mut take = |field: &str| match rule.remove(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some((format!("spec.rules[{i}].{field}"), v)),
        };
        let retry = take("retry");
        let session = take("sessionPersistence");
        out.push(RuleExtras {
            retry: match retry {
                None => None,
                Some((at, v)) => Some(typed_at(origin, doc, &at, v, warnings)?),
            },
            session_persistence: match session {
                None => None,
                Some((at, v)) => Some(typed_at(origin, doc, &at, v, warnings)?),
            },
        });
    }
    Ok(out)
}
